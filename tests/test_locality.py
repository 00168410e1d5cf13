"""The locality audit cannot be fooled. Each way a node could break locality is tried against a running fabric and
is caught with a named error or a listed violation, and the message never enters any arithmetic: (a) a send to a
non-neighbour, (b) a forged sender id, (c) reading a boundary signal that is not routed to the node, (d) a forged
coordinator abort, (e) a payload of the wrong batch size. What arrives on the wire and fails a check is dropped and
counted against its connection, and the phase's result is the one without it. A correct run lists no violation and
beta as global."""
import dataclasses
import json

import pytest
import torch

from cluster.runtime.coordinator import FabricEngine
from cluster.runtime.fabric import FabricError
from cluster.locality import locality_report
from cluster.messages import array_bytes, encode_control, encode_header
from cluster.inprocess import ReferenceEngine
from cluster.runtime.transport import TransportError, ZmqTransport, new_token
from nodes.layered import layered
from nodes.rules import LocalityError, NodeRule, PhaseRule
from protocols import get_protocol
from protocols.base import Phase
from tests.conftest import assert_png, batch, lrs, run_cli, scaled_params

DEEP = layered("energy", (4, 5, 3, 2), "sigmoid", dt=0.5)  # nodes L1 - L2 - L3: L1 and L3 are not neighbours
EP = get_protocol("ep-symmetric")


def settings(**kw):
    return dict(granularity="layer", lr=[0.1] * 3, dtype="float64", transport="zmq", timeout_s=5.0) | kw


class Tampered(PhaseRule):
    """A phase rule whose step is followed by `tamper(node id, state, outbox, boundary)`."""

    def step(self, state, inbox, params, boundary, t):
        state, out, delta = super().step(state, inbox, params, boundary, t)
        return state, self.node.tamper(state, out, boundary), delta


class Rogue(NodeRule):
    def phase(self, ph):
        return Tampered(self, ph)

    def tamper(self, state, out, boundary):
        return out


class SendsToL1(Rogue):
    def tamper(self, state, out, boundary):
        return {**out, ("L1", "a"): state["a"]} if self.id == "L3" else out


class HiddenReadsTarget(Rogue):
    def tamper(self, state, out, boundary):
        if self.id == "L2":
            boundary["y"]  # a hidden node asking for the target
        return out


class SendsOneSample(Rogue):
    def tamper(self, state, out, boundary):
        return {"a": state["a"][:1]} if self.id == "L1" else out


def fabric(model=DEEP, **kw):
    f = FabricEngine(model, EP, settings(**kw))
    f.set_params(scaled_params(model))
    f.set_batch(*batch(model))
    return f


def on_host(f, node, fn, *args):
    """Run fn(host, *args) inside the actor hosting `node` (how a test reaches below the node's rule)."""
    import ray
    return ray.get(f.fabric.hosts[f.fabric.placement[node]].__ray_call__.remote(fn, *args))


def _admit(host, user, token):
    host.transport.admit({user: token})


def _connect(host, peer, address, token):
    host.transport.connect(peer, address, token)


def _send(host, peer, header, payload):
    host.transport.send(peer, header, payload)


def report(f):
    return locality_report(f.specs, f.message_logs(), EP)


def phase_fails(rule, pattern: str, steps: int = 5) -> None:
    """A fabric of DEEP whose nodes run `rule`: its first phase fails with a FabricError matching `pattern`."""
    f = fabric(dataclasses.replace(DEEP, rule=rule))
    try:
        with pytest.raises(FabricError, match=pattern):
            f.run_phase(Phase("free", steps))
    finally:
        f.close()


@pytest.mark.slow
def test_a_correct_run_lists_no_violation_and_beta_as_global(ray_session):
    f = fabric()
    try:
        f.run_program(EP.program(0.1, 10, 4))
        rep = report(f)
        assert rep["violations"] == [] and rep["globals"]["beta"] == 3 and set(rep["globals"]) == {
            "batch", "beta", "protocol"}
        assert rep["boundary"] == {"x": ["L1"], "y": ["L3"]}
    finally:
        f.close()


@pytest.mark.slow
def test_a_send_to_a_non_neighbour_raises_and_forced_through_is_reported_never_used(ray_session):
    phase_fails(SendsToL1, r"node L3: .*LocalityError: node L3, phase free, step 1: sends to L1, which is not a "
                           r"graph neighbour")
    f = fabric()
    try:  # forced through below the guard: L3's host gets a credential at L1's host and sends on the wire
        f.run_phase(Phase("free", 6))
        clean = f.output("free")
        token = new_token()
        on_host(f, "L1", _admit, "L3", token)
        on_host(f, "L3", _connect, "L1", f.fabric.addresses["L1"], token)
        B = clean.shape[0]
        junk = torch.full((B, 2), 1e3, dtype=torch.float64)
        on_host(f, "L3", _send, "L1", encode_header("L3", "L1", "a", "free", f.fabric.serial + 1, 0, "float64",
                                                    [B, 2]), bytes(array_bytes(junk)))
        f.run_phase(Phase("free", 6))
        assert torch.equal(f.output("free"), clean)  # the value never entered L1's arithmetic
        rep = report(f)
        bad = [(v["src"], v["dst"], v["kind"], v["reason"], v["count"]) for v in rep["violations"]]
        assert bad == [("L3", "L1", "rejected", "not_a_port", 1)] and rep["rejected_by_reason"] == {"not_a_port": 1}
        assert "L3 is not a graph neighbour" in rep["violations"][0]["why"]
    finally:
        f.close()


@pytest.mark.slow
def test_a_forged_sender_id_is_caught_by_connection_identity(ray_session):
    """L3 is L2's neighbour and connected to it; it sends a message claiming to be L1, tagged for L2's next phase
    and step 0 (the attack that fooled the first design). It is dropped and blamed on L3's connection, not on L1;
    the phase runs as without it."""
    f = fabric()
    try:
        f.run_phase(Phase("free", 5))
        clean = f.output("free")
        B = 6
        forged = encode_header("L1", "L2", "a", "free", f.fabric.serial + 1, 0, "float64", [B, 5])
        on_host(f, "L3", _send, "L2", forged, bytes(array_bytes(torch.full((B, 5), 1e3, dtype=torch.float64))))
        f.run_phase(Phase("free", 5))
        assert torch.equal(f.output("free"), clean)
        rep = report(f)
        assert rep["violations"] == [{"src": "L3", "dst": "L2", "kind": "rejected", "phase": "", "count": 1,
                                      "reason": "forged", "why": "node L2, phase free, step 0, message on L3's "
                                                                 "connection claims to come from L1 (forged sender)"}]
        assert rep["rejected_by_reason"] == {"forged": 1} and rep["stale"] == 0
    finally:
        f.close()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fabric", "reference"])
def test_a_rule_reading_a_signal_not_routed_to_it_is_named(engine, ray_session):
    if engine == "fabric":
        phase_fails(HiddenReadsTarget, r"node L2: .*LocalityError: node L2, phase free: reads boundary 'y', which is "
                                       r"not routed to it")
    else:
        rogue = dataclasses.replace(DEEP, rule=HiddenReadsTarget)
        e = ReferenceEngine(rogue, EP, torch.float64, lrs(rogue))
        e.set_params(scaled_params(rogue))
        e.set_batch(*batch(rogue))
        with pytest.raises(LocalityError, match="node L2, phase free: reads boundary 'y', which is not routed"):
            e.run_phase(Phase("free", 3), record_states=True)


@pytest.mark.slow
def test_a_forged_coordinator_abort_is_rejected_and_later_phases_run(ray_session):
    f = fabric()
    try:
        f.run_phase(Phase("free", 4))
        clean = f.output("free")
        on_host(f, "L3", _send, "L2", encode_control("coordinator", "abort", 2 ** 61), b"")
        f.run_phase(Phase("free", 4))  # dropped: the phase runs as without it
        assert torch.equal(f.output("free"), clean)
        forged = [v for v in report(f)["violations"] if v["kind"] == "unknown"]
        assert [(v["src"], v["dst"], v["reason"], v["count"]) for v in forged] == [("L3", "L2", "control", 1)]
        assert forged[0]["why"] == ("host L2: an abort message on L3's connection (claiming coordinator); only the "
                                    "coordinator may abort")
        outsider = ZmqTransport("coordinator", send_timeout_s=1.0)  # someone without the coordinator's credential
        try:
            outsider.connect("L2", f.fabric.addresses["L2"], "guessed")
            try:  # queued while the handshake is under way, or refused already: either way it never arrives
                outsider.send("L2", encode_control("coordinator", "abort", 2 ** 62), b"")
            except TransportError:
                pass
            for _ in range(3):  # each phase would fail at once had the abort been accepted
                assert f.run_phase(Phase("free", 4))["residual"] >= 0
        finally:
            outsider.close()
        refused = [v for v in report(f)["violations"] if v["kind"] == "refused"]
        assert refused and refused[0]["src"] == "coordinator" and refused[0]["dst"] == "L2"
    finally:
        f.close()


@pytest.mark.slow
def test_a_payload_of_the_wrong_batch_size_is_an_error_not_a_broadcast(ray_session):
    """L1's (1, 5) payloads (steps 1 and 2: L1 needs only L2's step 1 to send its step 2) cross the wire to L2,
    which drops them (shape) and waits for the real one, which never comes: the phase times out (L2 naming L1 and
    the dropped message, or first a neighbour waiting for L2: L1 or L3), and the report names the drops, blamed on
    L1's connection."""
    f = fabric(dataclasses.replace(DEEP, rule=SendsOneSample), timeout_s=1.0)
    try:
        with pytest.raises(FabricError, match=r"node (L\d): run_phase failed: PhaseError: node \1, phase free, "
                                              r"step [12]: no message from \['L\d'\] within 1 s") as err:
            f.run_phase(Phase("free", 3))
        if str(err.value).startswith("node L2"):
            assert ("(last dropped: node L2, phase free, step 2, message on L1's connection (claiming L1): "
                    "float64[1, 5], expected float64[6, 5])") in str(err.value)
        rep = report(f)
        assert rep["rejected_by_reason"] == {"shape": 2}
        assert [(v["src"], v["dst"], v["reason"], v["count"]) for v in rep["violations"]] == [("L1", "L2", "shape", 2)]
        assert rep["violations"][0]["why"] == ("node L2, phase free, step 1, message on L1's connection (claiming L1): "
                                               "float64[1, 5], expected float64[6, 5]")
    finally:
        f.close()


@pytest.mark.slow
def test_audit_draws_the_locality_graph(tmp_path, ray_session):
    out = tmp_path / "a"
    r = run_cli("audit", "--set", "sizes=[5,8,6,3]", "--set", "dataset=random", "--set", "granularity=neuron",
                "--set", "fabric.hosts=3", "--set", "T1=20", "--set", "T2=5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "audit.json").read_text())["locality"]
    assert rep["violations"] == [] and rep["globals"]["beta"] == 17 and len(set(rep["placement"].values())) == 3
    assert rep["edges"] == rep["legal_edges"] == 2 * (8 * 6 + 6 * 3)
    assert (out / "locality.png").stat().st_size > 10_000
    assert_png(out / "locality.png", 700, 400)
    assert_png(out / "estimate_vs_bptt.png", 500, 300)


def test_the_report_flags_coordinator_signals_outside_their_routes():
    """From receivers' logs alone: y delivered to a hidden node (as boundary or disguised as a global), an
    undeclared port kind between neighbours, a rejected message and a refused connection are all violations."""
    specs = DEEP.node_specs(DEEP.partition("layer"))
    c = "coordinator"
    logs = {"nodes": {"L2": {"counters": [[c, "L2", "control", "free", 1, 0], [c, "L2", "global", "beta", 1, 8],
                                          [c, "L2", "boundary", "y", 1, 48], [c, "L2", "global", "target", 1, 48],
                                          ["L1", "L2", "a", "free", 4, 160], ["L1", "L2", "y", "free", 1, 40]],
                             "rejected": [{"user": "L3", "reason": "forged", "count": 2, "why": "claims L1"},
                                          {"user": "L1", "reason": "stale", "count": 5, "why": "an aborted phase's"}]},
                      "L3": {"counters": [[c, "L3", "boundary", "y", 1, 48]]}},
            "refused": [{"user": "H9", "mechanism": "PLAIN", "address": "", "host": "L2", "count": 3}],
            "unknown": [{"user": "L3", "reason": "undecodable", "count": 4, "why": "random bytes", "host": "L2"}]}
    rep = locality_report(specs, logs, EP)
    why = sorted((v["src"], v["dst"], v["kind"], v["phase"], v["count"]) for v in rep["violations"])
    assert why == [("H9", "L2", "refused", "", 3), ("L1", "L2", "y", "free", 1), ("L3", "L2", "rejected", "", 2),
                   ("L3", "L2", "unknown", "", 4), (c, "L2", "boundary", "y", 1), (c, "L2", "global", "target", 1)]
    assert rep["rejected_by_reason"] == {"forged": 2, "undecodable": 4} and rep["stale"] == 5  # stale: no violation
    assert rep["globals"] == {"beta": 1, "target": 1} and rep["boundary"] == {"y": ["L2", "L3"]}


class DoublesTowardsL1(Rogue):
    """L2 sends L1 twice its signal and L3 its signal: a different payload on each port."""

    def tamper(self, state, out, boundary):
        return {**out, ("L1", "a"): 2 * state["a"]} if self.id == "L2" else out


@pytest.mark.slow
def test_a_node_may_send_a_different_payload_on_each_port_alike_on_both_engines(ray_session):
    model = dataclasses.replace(DEEP, rule=DoublesTowardsL1)
    ref = ReferenceEngine(model, EP, torch.float64, lrs(model))
    f = fabric(model, granularity="layer")
    plain = ReferenceEngine(DEEP, EP, torch.float64, lrs(DEEP))
    try:
        outs = []
        for e in (ref, plain):
            e.set_params(scaled_params(model))
            e.set_batch(*batch(model))
        for e in (ref, f, plain):
            outs.append(e.run_phase(Phase("free", 12), record_states=True)["states"])
        (a, b, c) = outs
        assert all(torch.allclose(x, y, rtol=1e-12, atol=1e-15) for x, y in zip(a, b))  # same on both runners
        assert float((a[0] - c[0]).abs().max()) > 1e-3  # and L1 did see the doubled payload
        assert report(f)["violations"] == []
    finally:
        f.close()
