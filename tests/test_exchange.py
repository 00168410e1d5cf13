"""Frames (cluster/runtime/exchange.py): many logical nodes per host, one frame per host pair per step.

The frames data plane must compute exactly what the per-message one computes (bitwise, float64, the locality log
included), equal the in-process engine, and drop whatever fails a check by name, counted against the connection
it came on, without changing a result. Hosts run as threads (local transport); the fuzzed frames are built so that
their reason does not depend on when during the phase they are read (as in tests/test_fuzz.py)."""
import collections

import msgpack
import numpy as np
import pytest
import torch

from cluster.runtime.coordinator import FabricEngine
from cluster.runtime.exchange import FRAME, Exchange
from cluster.locality import locality_report
from cluster.runtime.message_log import COORDINATOR, MessageLog
from cluster.runtime.admission import Drops
from cluster.messages import encode_control, encode_header
from cluster.inprocess import ReferenceEngine
from cluster.runtime.transport import new_token
from nodes.layered import layered, layered_asym
from protocols import get_protocol
from protocols.base import Phase
from tests.conftest import batch, scaled_params
from tests.test_fuzz import paced_sender

NET = layered("energy", (4, 3, 3, 2), "sigmoid", dt=0.5)  # 8 neurons, round-robin on H0 and H1
EP = get_protocol("ep-symmetric")
B = 6


def hosted(exchange: str, model=NET, protocol=EP, hosts: int = 2, **extra):
    settings = dict(granularity="neuron", hosts=hosts, lr=[0.1] * (len(model.groups) - 1), dtype="float64",
                    timeout_s=20.0, exchange=exchange)
    return FabricEngine(model, protocol, {**settings, **extra}, local=True)


def counters(logs) -> list:
    """Every edge's counters and, in `full` mode, every record, sorted."""
    return sorted(tuple(c) for n in logs["nodes"].values() for c in n["counters"] + n["records"])


@pytest.mark.parametrize("protocol, model, log", [
    ("ep-symmetric", NET, "counters"),
    ("ep-symmetric", NET, "full"),
    ("aep-symmetric", layered_asym((4, 6, 3), "tanh", True, 0.2, "vector-field"), "counters"),  # a, r and t (targeted)
], ids=["ep", "ep-full-log", "aep-symmetric"])
def test_frames_compute_and_log_exactly_what_messages_do(protocol, model, log):
    """Two training batches on 2 hosts: parameters, predictions and every edge's (count, bytes) per phase (and in
    `full` mode every record) are bitwise those of the per-message data plane."""
    got = {}
    for exchange in ("messages", "frames"):
        f = hosted(exchange, model, get_protocol(protocol), log=log)
        try:
            f.set_params(model.init_params(2, torch.float64, 1.5))
            x, y = batch(model, B)
            outs = [f.train_batch(x, y, 0.5, 12, 4) for _ in range(2)]
            got[exchange] = (outs, f.get_params(), counters(f.message_logs()), f.fabric.exchange)
        finally:
            f.close()
    (o1, p1, c1, e1), (o2, p2, c2, e2) = got["messages"], got["frames"]
    assert (e1, e2) == ("messages", "frames")
    assert all(torch.equal(a, b) for a, b in zip(o1, o2))
    assert p1.keys() == p2.keys() and all(torch.equal(p1[k], p2[k]) for k in p1)
    assert c1 == c2 and len(c1) > 0


def test_a_hosted_neuron_fabric_equals_the_in_process_engine():
    """P-MLP (prototypical) at neuron granularity on 3 hosts against the in-process engine: a training batch's
    prediction and updated parameters to 1e-12 (float64)."""
    model = layered("prototypical", (5, 4, 3), "sigmoid")
    params = scaled_params(model)
    x, y = batch(model, B)
    ref = ReferenceEngine(model, EP, torch.float64, {"W0": 0.1, "b0": 0.1, "W1": 0.1, "b1": 0.1})
    f = hosted("auto", model, hosts=3)
    try:
        assert f.fabric.exchange == "frames"
        ref.set_params(params)
        f.set_params(params)
        a, b = ref.train_batch(x, y, 0.5, 15, 5), f.train_batch(x, y, 0.5, 15, 5)
        assert (a - b).abs().max() < 1e-12
        pa, pb = ref.get_params(), f.get_params()
        assert max((pa[k] - pb[k]).abs().max().item() for k in pa) < 1e-12
        rep = locality_report(f.specs, f.message_logs(), EP)
        assert rep["violations"] == [] and rep["edges"] == rep["legal_edges"] == 2 * 4 * 3
    finally:
        f.close()


# ---- the checks, at one Exchange ------------------------------------------------------------------------------
def exchange_h1(steps: int = 20):
    """H1's Exchange on NET's neurons (round-robin over H0, H1), and a frame of H0 for a step."""
    specs = NET.node_specs(NET.partition("neuron"), EP.ports)
    placement = {i: f"H{k % 2}" for k, i in enumerate(specs)}
    mine = {i: s for i, s in specs.items() if placement[i] == "H1"}
    logs = {i: MessageLog() for i in mine}
    ex = Exchange("H1", mine, placement, logs, Drops(), "float64", 1 << 20)
    ex.start(5, "free", steps, (), torch.float64, B)
    width = ex.lay.peers_in["H0"][1]
    return ex, width


def frame(width, serial=5, step=0, phase="free", dtype="float64", rows=B, src="H0", dst="H1", value=1.0):
    arr = np.full((rows, width), value)
    return src, dst, phase, serial, step, dtype, [rows, width], arr.astype(dtype if dtype != "bogus" else "f8")


@pytest.mark.parametrize("change, reason", [
    (dict(src="H9"), "forged"), (dict(dst="H7"), "not_here"), (dict(step=-1), "malformed"),
    (dict(serial=4), "stale"), (dict(serial=7), "future"), (dict(step=9), "future"), (dict(step=4), "future"),
    (dict(phase="plus"), "phase"), (dict(dtype="float32"), "dtype"), (dict(rows=B + 1), "shape"),
    (dict(width=1), "shape"), (dict(payload=b"\0" * 7), "size"), (dict(payload=None), "frames"),
])
def test_a_frame_that_fails_a_check_is_dropped_by_name_against_its_connection(change, reason):
    ex, width = exchange_h1(steps=3)
    user = change.pop("user", "H0")
    payload = change.pop("payload", False)
    src, dst, phase, serial, step, dtype, shape, arr = frame(change.pop("width", width), **change)
    ex.arrive(user, src, dst, phase, serial, step, dtype, shape, arr.tobytes() if payload is False else payload)
    assert [(e["user"], e["reason"], e["count"]) for e in ex.drops.export()] == [(user, reason, 1)]
    assert not ex.buffer and not ex.ready(0)


def test_frames_are_buffered_in_a_window_checked_again_when_their_phase_starts_and_read_only_by_their_ports():
    ex, width = exchange_h1()
    f = frame(width, step=0)
    ex.arrive("H0", *f[:-1], f[-1].tobytes())
    ex.arrive("H0", *f[:-1], f[-1].tobytes())                       # the same (serial, step) again
    for step in range(1, 8):                                         # 8 held from H0: the bound
        g = frame(width, step=step)
        ex.arrive("H0", *g[:-1], g[-1].tobytes())
    nxt = frame(width, serial=6, phase="plus")                      # a phase ahead: its name is checked at start
    ex.arrive("H0", *nxt[:-1], nxt[-1].tobytes())
    far = frame(width, step=8)                                       # past the window of what H0 delivered
    ex.arrive("H0", *far[:-1], far[-1].tobytes())
    assert {e["reason"]: e["count"] for e in ex.drops.export()} == {"duplicate": 1, "full": 1, "future": 1}
    assert ex.ready(0)
    ex.receive(0)
    ex.arrive("H0", *nxt[:-1], nxt[-1].tobytes())                   # room again
    ex.arrive("H0", *f[:-1], f[-1].tobytes())                       # delivered already
    assert {e["reason"]: e["count"] for e in ex.drops.export()}["replayed"] == 1
    for name, s in ex.specs.items():                                 # each slot holds what its ports name
        inbox = ex.inbox(name, 0, {})
        for slot in s.slots.values():
            remote = [p for p in slot.parts if ex.placement.get(p[0]) == "H0"]
            for src, lo, hi in remote:
                assert torch.equal(inbox[slot.name][:, lo:hi], torch.ones(B, hi - lo, dtype=torch.float64))
        with pytest.raises(Exception, match=rf"node {name}, phase free, step 0: reads port 'nope'"):
            inbox["nope"]
    ex.start(6, "free", 3, (), torch.float64, B)                     # serial 6 runs "free": the early one was "plus"
    reasons = {e["reason"]: e["count"] for e in ex.drops.export()}
    assert reasons["phase"] == 1 and reasons["stale"] == 7 and not ex.buffer


# ---- fuzz at a running host -------------------------------------------------------------------------------------
USERS = {"H0x": "H0", "H9": "H9"}  # fuzz connections: token name -> authenticated user


def fuzz(rng, s: int, width: int):
    """One fuzzed frame (connection, header, payload, expected reason); s is the last completed phase's serial."""
    f64 = lambda rows=B, w=width: bytes(8 * rows * w)  # noqa: E731
    good = encode_header("H0", "H1", FRAME, "free", s + 2, 0, "float64", [B, width])
    cases = [
        lambda: ("H0x", b"\xc1" + rng.bytes(int(rng.integers(0, 64))), f64(), "undecodable"),
        lambda: ("H0x", msgpack.packb(["H0", "H1", FRAME, "free", -1, 0, "float64", [B, width]]), f64(), "malformed"),
        lambda: ("H0x", good, None, "frames"),
        lambda: ("H0x", encode_control(COORDINATOR, "abort", 2 ** 40), b"", "control"),
        lambda: ("H0x", encode_header("L1.0", "L2.1", "a", "free", s + 2, 0, "float64", [B, 1]), f64(w=1),
                 "exchange"),
        lambda: ("H9", good, f64(), "forged"),
        lambda: ("H0x", encode_header("H0", "H7", FRAME, "free", s + 2, 0, "float64", [B, width]), f64(), "not_here"),
        lambda: ("H9", encode_header("H9", "H1", FRAME, "free", s + 2, 0, "float64", [B, width]), f64(), "not_a_port"),
        lambda: ("H0x", encode_header("H0", "H1", FRAME, "free", int(rng.integers(1, s + 1)),
                                      int(rng.integers(0, 40)), "float64", [B, width]), f64(), "replayed"),
        lambda: ("H0x", encode_header("H0", "H1", FRAME, "free", int(rng.integers(s + 3, 2 ** 40)), 0, "float64",
                                      [B, width]), f64(), "future"),
        lambda: ("H0x", encode_header("H0", "H1", FRAME, "free", s + 2, int(rng.integers(8, 2 ** 40)), "float64",
                                      [B, width]), f64(), "future"),
        lambda: ("H0x", encode_header("H0", "H1", FRAME, "free", s + 2, 0, str(rng.choice(["float32", "int64",
                                      "complex64", "bogus"])), [B, width]), f64(), "dtype"),
        lambda: ("H0x", encode_header("H0", "H1", FRAME, "free", s + 2, 0, "float64",
                                      [[B], [B, width, 1], [0, width]][int(rng.integers(0, 3))]), f64(), "shape"),
        lambda: ("H0x", good, f64()[:int(rng.integers(0, 8 * B * width))], "size"),
        lambda: ("H0x", encode_header("H0", "H1", FRAME, "free", s + 2, 0, "float64", [1 << 20, width]), f64(),
                 "size"),
    ]
    return cases[int(rng.integers(0, len(cases)))]()


def test_two_thousand_fuzzed_frames_are_dropped_by_name_and_the_phase_is_unchanged():
    f = hosted("frames", max_message_bytes=1 << 20)
    try:
        f.set_params(scaled_params(NET))
        f.set_batch(*batch(NET, B))
        phase = Phase("free", 300)
        f.run_phase(phase)
        clean = f.output("free")
        host = f.fabric.hosts["H1"]
        tx, width = host.transport, host.exchange.lay.peers_in["H0"][1]
        tokens = {name: new_token() for name in USERS}
        tx.admit({USERS[name]: tok for name, tok in tokens.items()})  # a second credential of H0 (compromised)
        rng = np.random.default_rng(0)
        s = f.fabric.serial
        frames = [fuzz(rng, s, width) for _ in range(2000)]
        expected = collections.Counter(m[3] for m in frames)

        sender = paced_sender(tx, tokens, frames)
        sender.start()
        f.run_phase(phase)
        sender.join(timeout=60)
        assert not sender.is_alive() and tx.pending == 0, "the fuzz outlasted the phase: raise its steps"
        assert torch.equal(f.output("free"), clean)  # bitwise, float64
        got = collections.Counter()
        for e in host.unknown.export():
            got[e["reason"]] += e["count"]
        assert got == expected and {e["user"] for e in host.unknown.export()} == {"H0", "H9"}
        rep = locality_report(f.specs, f.message_logs(), EP)
        assert rep["rejected_by_reason"] == dict(sorted(expected.items())) and rep["stale"] == 0
        assert sum(v["count"] for v in rep["violations"]) == 2000
    finally:
        f.close()


@pytest.mark.parametrize("reason", ["forged", "accepted"])
def test_a_fuzzed_frame_that_is_accepted_would_be_caught(reason):
    """The harness sees a leak: junk on H0's own connection for the running phase's first step, queued before
    H0's real frame, changes the result (and the real one is dropped); on a connection that runs no node it is
    dropped and changes nothing."""
    f = hosted("frames")
    try:
        f.set_params(scaled_params(NET))
        f.set_batch(*batch(NET, B))
        f.run_phase(Phase("free", 20))
        clean = f.output("free")
        host = f.fabric.hosts["H1"]
        tx, width = host.transport, host.exchange.lay.peers_in["H0"][1]
        if reason == "forged":
            token = new_token()
            tx.admit({"H9": token})
        else:
            token = next(t for t, u in tx.by_token.items() if u == "H0")
        tx.deliver(token, encode_header("H0", "H1", FRAME, "free", f.fabric.serial + 1, 0, "float64", [B, width]),
                   np.full((B, width), 1e3).tobytes())
        f.run_phase(Phase("free", 20))
        assert torch.equal(f.output("free"), clean) == (reason == "forged")
        got = collections.Counter({e["reason"]: e["count"] for e in host.unknown.export()})
        assert got == collections.Counter({"forged": 1}) if reason == "forged" else (
            sum(got.values()) == 1 and set(got) <= {"duplicate", "replayed"}), got
    finally:
        f.close()


def test_a_host_whose_peer_sends_no_frame_times_out_naming_host_phase_step_and_peer():
    """H1 computes but sends nothing: H0 waits for H1's step-0 frame and fails with a named timeout, not a hang."""
    from cluster.runtime.fabric import FabricError
    f = hosted("frames", timeout_s=1.0)
    try:
        f.set_params(scaled_params(NET))
        f.set_batch(*batch(NET, B))
        f.fabric.hosts["H1"].exchange.frames = lambda t: iter(())
        with pytest.raises(FabricError, match=r"host H0 \(nodes [^)]*\): run_phase failed: PhaseError: host H0, "
                                              r"phase free, step 0: no frame from \['H1'\] within 1 s"):
            f.run_phase(Phase("free", 5))
    finally:
        f.close()
