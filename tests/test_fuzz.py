"""10,000 fuzzed data-plane messages at one node while it runs a phase: each is dropped under the reason it was built
to trip and counted against the connection it came on, the counts add up exactly to what was sent, the locality
report lists them as violations, and the phase ends bitwise as it does without the fuzz (float64), without hanging.

The fabric runs in-process (hosts as threads, token transport). Every fuzzed message is built so that its reason
does not depend on when during the phase it is read: replays name a phase already completed, the next-but-one
phase's messages (dtype, shape, size) sit past every legitimate step, far-future ones far beyond any window."""
import collections
import threading
import time

import msgpack
import numpy as np
import pytest
import torch

from cluster.runtime.coordinator import FabricEngine
from cluster.locality import locality_report
from cluster.runtime.message_log import COORDINATOR
from cluster.messages import encode_control, encode_header
from cluster.runtime.transport import new_token
from nodes.layered import layered
from protocols import get_protocol
from protocols.base import Phase
from tests.conftest import batch, scaled_params

NET = layered("energy", (4, 5, 3, 3, 2), "sigmoid", dt=0.5)  # L1 - L2 - L3 - L4: L4 is not L2's neighbour
EP = get_protocol("ep-symmetric")
B, STEPS, N = 6, 1500, 10_000
MAX_BYTES = 1 << 20
USERS = {"L1x": "L1", "L3x": "L3", "L4x": "L4", "H9": "H9"}  # fuzz connections: token name -> authenticated user


def fuzz(rng, s: int):
    """One fuzzed message (connection, header, payload, expected reason); s is the last completed phase's serial,
    s + 1 the one running, so s + 2 is the next one."""
    f64 = lambda rows=B, w=5: bytes(8 * rows * w)  # noqa: E731
    good = encode_header("L1", "L2", "a", "free", s + 2, 0, "float64", [B, 5])
    cases = [
        lambda: ("L1x", b"\xc1" + rng.bytes(int(rng.integers(0, 64))), f64(), "undecodable"),  # random bytes
        lambda: ("L3x", good[:int(rng.integers(1, len(good)))], f64(), "undecodable"),          # a truncated header
        lambda: ("H9", b"\x98" + b"\xa1a" * 600, f64(), "undecodable"),                         # an oversized one
        lambda: ("L1x", msgpack.packb(rng.integers(0, 9, int(rng.integers(0, 8))).tolist()), f64(), "malformed"),
        lambda: ("L1x", msgpack.packb(["L1", "L2", "a", "free", -1, 0, "float64", [B, 5]]), f64(), "malformed"),
        lambda: ("L1x", msgpack.packb(["L1", "L2", "a", "free", s + 2, "0", "float64", [B, 5]]), f64(),
                 "malformed"),
        lambda: ("L1x", good, None, "frames"),                                                  # one frame
        lambda: ("L3x", encode_control(COORDINATOR, "abort", 2 ** 40), b"", "control"),        # a forged abort
        lambda: ("coord", encode_control(COORDINATOR, "progress", 1), b"", "control"),
        lambda: ("L1x", encode_header("L1", "L3", "a", "free", s + 2, 0, "float64", [B, 3]), f64(w=3), "not_here"),
        lambda: ("H9", good, f64(), "forged"),                                   # an admitted host that runs no node
        lambda: ("L3x", good, f64(), "forged"),                                  # a neighbour claiming another
        lambda: ("L4x", encode_header("L4", "L2", "a", "free", s + 2, 0, "float64", [B, 5]), f64(), "not_a_port"),
        lambda: ("L3x", encode_header("L3", "L2", "zz", "free", s + 2, 0, "float64", [B, 3]), f64(w=3),
                 "not_a_port"),
        lambda: ("L1x", encode_header("L1", "L2", "a", "free", int(rng.integers(1, s + 1)),
                                      int(rng.integers(0, STEPS + 1)), "float64", [B, 5]), f64(), "replayed"),
        lambda: ("L1x", encode_header("L1", "L2", "a", "free", int(rng.integers(s + 3, 2 ** 40)), 0, "float64",
                                      [B, 5]), f64(), "future"),
        lambda: ("L1x", encode_header("L1", "L2", "a", "free", s + 2, int(rng.integers(8, 2 ** 40)), "float64",
                                      [B, 5]), f64(), "future"),
        lambda: ("L1x", encode_header("L1", "L2", "a", "free", s + 2, 0, str(rng.choice(["float32", "int64",
                                      "complex64", "bogus"])), [B, 5]), f64(), "dtype"),
        lambda: ("L1x", encode_header("L1", "L2", "a", "free", s + 2, 0, "float64",
                                      [[B, 4], [B, 5, 1], [0, 5], [B]][int(rng.integers(0, 4))]), f64(), "shape"),
        lambda: ("L1x", good, f64()[:int(rng.integers(0, 8 * B * 5))], "size"),               # truncated payload
        lambda: ("L1x", good, f64() * 10, "size"),                                            # oversized payload
        lambda: ("L1x", encode_header("L1", "L2", "a", "free", s + 2, 0, "float64", [40_000, 5]), f64(), "size"),
    ]
    return cases[int(rng.integers(0, len(cases)))]()


def paced_sender(tx, tokens: dict, msgs: list) -> threading.Thread:
    """A thread that delivers msgs [(connection, header, payload, reason)] at a running host, never more than the
    connection's queue holds (so none is "full")."""
    def send():
        for conn, header, payload, _ in msgs:
            q = tx.queues.get(tokens[conn])
            while q is not None and len(q) >= tx.hwm - 1:
                time.sleep(0.0005)
            tx.deliver(tokens[conn], header, payload)
    return threading.Thread(target=send, daemon=True)


def counted(f) -> collections.Counter:
    """Drops at L2's host by reason: its node's log, its host-level drops, its transport's overflow."""
    host = f.fabric.hosts["L2"]
    out = collections.Counter()
    for e in host.logs["L2"].drops.export() + host.unknown.export() + host.transport.overflow():
        out[e["reason"]] += e["count"]
    return out


def blamed(f) -> set:
    host = f.fabric.hosts["L2"]
    return {e["user"] for e in host.logs["L2"].drops.export() + host.unknown.export() + host.transport.overflow()}


@pytest.mark.slow
def test_ten_thousand_fuzzed_messages_are_dropped_by_name_and_the_phase_is_unchanged():
    f = FabricEngine(NET, EP, dict(granularity="layer", lr=[0.1] * 4, dtype="float64", timeout_s=20.0,
                                   max_message_bytes=MAX_BYTES), local=True)
    try:
        f.set_params(scaled_params(NET))
        f.set_batch(*batch(NET, B))
        phase = Phase("free", STEPS)
        f.run_phase(phase)
        clean = f.output("free")
        host = f.fabric.hosts["L2"]
        tx = host.transport
        tokens = {name: new_token() for name in USERS}
        tx.admit({USERS[name]: tok for name, tok in tokens.items()})  # a second credential for L1, L3 (compromised)
        tokens["coord"] = f.fabric.abort_tokens["L2"]
        tokens["H8"] = new_token()
        tx.admit({"H8": tokens["H8"]})
        expected = collections.Counter()
        for _ in range(tx.hwm + 50):  # a burst on one connection with no phase running: the queue's bound holds
            tx.deliver(tokens["H8"], encode_header("L1", "L2", "a", "free", 9, 0, "float64", [B, 5]), bytes(240))
        expected.update({"forged": tx.hwm, "full": 50})
        s = f.fabric.serial
        rng = np.random.default_rng(0)
        msgs = [fuzz(rng, s) for _ in range(N)]
        expected.update(m[3] for m in msgs)

        sender = paced_sender(tx, tokens, msgs)
        t0 = time.monotonic()
        sender.start()
        f.run_phase(phase)
        sender.join(timeout=60)
        assert not sender.is_alive() and tx.pending == 0, "the fuzz outlasted the phase: raise STEPS"
        assert time.monotonic() - t0 < 60
        assert torch.equal(f.output("free"), clean)  # bitwise, float64: nothing fuzzed entered the arithmetic
        assert counted(f) == expected and sum(expected.values()) == N + tx.hwm + 50
        assert blamed(f) == {"L1", "L3", "L4", "H9", "H8", COORDINATOR}  # connections, not the senders claimed
        rep = locality_report(f.specs, f.message_logs(), EP)
        assert rep["rejected_by_reason"] == dict(sorted(expected.items())) and rep["stale"] == 0
        assert sum(v["count"] for v in rep["violations"]) == N + tx.hwm + 50
        assert {v["kind"] for v in rep["violations"]} == {"rejected", "unknown"}
        f.run_phase(phase)  # and the node goes on serving
        assert torch.equal(f.output("free"), clean)
    finally:
        f.close()


@pytest.mark.parametrize("reason", ["forged", "accepted"])
def test_a_fuzzed_message_that_is_accepted_would_be_caught(reason):
    """The harness sees a leak: a message the node takes (on L1's own connection, the running phase's serial and a
    step not yet delivered, queued before L1's own) changes the result, and L1's real one is dropped; the
    same message on a connection that runs no node is dropped and changes nothing."""
    f = FabricEngine(NET, EP, dict(granularity="layer", lr=[0.1] * 4, dtype="float64", timeout_s=20.0), local=True)
    try:
        f.set_params(scaled_params(NET))
        f.set_batch(*batch(NET, B))
        f.run_phase(Phase("free", 20))
        clean = f.output("free")
        tx = f.fabric.hosts["L2"].transport
        s = f.fabric.serial
        junk = np.full((B, 5), 1e3).tobytes()
        if reason == "forged":
            token = new_token()
            tx.admit({"H9": token})  # a connection that runs no node
        else:  # L1's own connection: one FIFO queue, so the junk is taken before L1's real step-0 message
            token = next(t for t, u in tx.by_token.items() if u == "L1")
        tx.deliver(token, encode_header("L1", "L2", "a", "free", s + 1, 0, "float64", [B, 5]), junk)
        f.run_phase(Phase("free", 20))
        assert torch.equal(f.output("free"), clean) == (reason == "forged")
        got = counted(f)  # L1's real message: still buffered behind the junk (duplicate) or after it (replayed)
        assert got == collections.Counter({"forged": 1}) if reason == "forged" else (
            sum(got.values()) == 1 and set(got) <= {"duplicate", "replayed"}), got
    finally:
        f.close()
