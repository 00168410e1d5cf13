"""The fabric (Ray actors, zmq or Ray transport, any partition) computes exactly what the in-process
engine computes: same trajectory at every step, same estimate, same weights after training."""
import numpy as np
import pytest
import torch

from cluster.coordinator import FabricEngine
from cluster.fabric import FabricError
from cluster.locality import locality_report
from cluster.reference import ReferenceEngine
from nodes.model import LayeredModel
from protocols import PROTOCOLS, get_protocol
from protocols.base import run_schedule
from tests.conftest import batch, scaled_params

# One hidden layer keeps every gradient within a few orders of G's size: an estimate divides a difference
# of G's by beta, so rounding in it is about 1e-16 |G| / (beta |g|) relative to g.
MODEL = LayeredModel("energy", (4, 6, 3), "sigmoid", dt=0.5)
DEEP = LayeredModel("energy", (4, 5, 3, 2), "sigmoid", dt=0.5)
LR = [0.05, 0.1]


def settings(**kw):
    s = dict(granularity="layer", lr=LR, protocol="ep-symmetric", dtype="float64", transport="zmq",
             log="counters", timeout_s=30.0)
    s.update(kw)
    return s


def rel(a, b):
    return float((a - b).norm() / b.norm())


def reference(protocol="ep-symmetric", params=None):
    e = ReferenceEngine(MODEL, protocol, torch.float64, {f"{p}{n}": lr for n, lr in enumerate(LR) for p in "Wb"})
    e.set_params(params or scaled_params(MODEL))
    return e


FABRICS = [dict(granularity="layer"), dict(granularity="neuron"), dict(granularity="layer", split=2),
           dict(granularity="layer", transport="ray"), dict(granularity="layer", wire="tcp")]


@pytest.fixture(scope="module", params=FABRICS, ids=lambda s: "-".join(str(v) for v in s.values()))
def fabric(request, ray_session):
    f = FabricEngine(MODEL, settings(**request.param, log="full"))
    yield f
    f.close()


def test_fabric_trajectory_matches_reference(fabric):
    x, y = batch(MODEL)
    ref = reference()
    fabric.set_params(scaled_params(MODEL))
    for e in (ref, fabric):
        e.set_batch(x, y)
    for name, steps, beta, start in [("free", 25, 0.0, "zero"), ("plus", 8, 0.1, "free"), ("minus", 8, -0.1, "free")]:
        a = ref.run_phase(name, steps, beta, start, record_states=True)["states"]
        b = fabric.run_phase(name, steps, beta, start, record_states=True)["states"]
        for sa, sb in zip(a, b):  # (steps+1, B, d_n): every step, every layer
            assert sa.shape == sb.shape
            err = ((sa - sb).flatten(1).norm(dim=1) / sa.flatten(1).norm(dim=1).clamp_min(1e-300)).max()
            assert err <= 1e-12, (name, float(err))


def test_fabric_estimate_matches_reference_and_is_local(fabric):
    x, y = batch(MODEL, seed=3)
    ref = reference()
    fabric.set_params(scaled_params(MODEL))
    fabric.message_logs(clear=True)
    beta = 1e-2
    for e in (ref, fabric):
        e.set_batch(x, y)
        run_schedule(get_protocol("ep-symmetric"), e, beta, 30, 10)
    ga, gb = ref.update(beta, apply=False), fabric.update(beta, apply=False)
    for k in ga:
        assert rel(gb[k], ga[k]) <= 1e-12, k
    rep = locality_report(MODEL, list(fabric.blocks.values()), fabric.message_logs())
    assert rep["violations"] == []
    assert rep["messages"] > 0 and rep["edges"] == rep["legal_edges"]


def test_training_on_fabric_equals_reference_and_replicas_agree(fabric):
    ref = reference()
    fabric.set_params(scaled_params(MODEL))
    protocol = get_protocol("ep-symmetric")
    for i in range(4):  # a phase call each, then one call per batch (train_batch): the same arithmetic
        x, y = batch(MODEL, seed=10 + i)
        if i < 2:
            for e in (ref, fabric):
                e.set_batch(x, y)
                run_schedule(protocol, e, 0.1, 20, 6)
                e.update(0.1, apply=True, gather=False)
        else:
            out_a, out_b = (e.train_batch(x, y, 0.1, 20, 6) for e in (ref, fabric))
            assert out_a.shape == out_b.shape == y.shape and rel(out_b, out_a) <= 1e-12
    pa, pb = ref.get_params(), fabric.get_params()
    for k in pa:
        assert rel(pb[k], pa[k]) <= 1e-12, k
    drift = fabric.replica_drift()
    assert set(drift) == {"W1"} and max(drift.values()) <= 1e-14


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_protocol_is_local_on_neuron_fabric(protocol, ray_session):
    m = LayeredModel("prototypical", (3, 3, 2), "sigmoid")
    f = FabricEngine(m, settings(granularity="neuron", protocol=protocol, lr=[0.1, 0.1]))
    try:
        f.set_params(scaled_params(m))
        x, y = batch(m)
        f.set_batch(x, y)
        p = get_protocol(protocol)
        run_schedule(p, f, p.batch_beta(0.1, np.random.default_rng(0)), 10, 4)
        f.update(0.1)
        rep = locality_report(m, list(f.blocks.values()), f.message_logs())
        assert rep["violations"] == [] and rep["messages"] > 0
        assert rep["coordinator"]["boundary"] > 0 and rep["coordinator"]["control"] > 0
    finally:
        f.close()


def test_injected_nonlocal_rule_is_reported(ray_session):
    """Layer 3 sends its state straight to layer 1 (not a neighbour) every step, and layer 1 reads it."""
    f = FabricEngine(DEEP, settings(lr=[0.1] * 3))
    try:
        f.set_params(scaled_params(DEEP))
        nodes = f.fabric.nodes
        import ray
        ray.get([nodes["L3"].inject_link.remote("L1", f.fabric.endpoints["L1"]),
                 nodes["L1"].inject_link.remote("L3", None, True)])
        x, y = batch(DEEP)
        f.set_batch(x, y)
        f.run_phase("free", 5, 0.0, "zero")
        rep = locality_report(DEEP, list(f.blocks.values()), f.message_logs())
        bad = [(v["src"], v["dst"]) for v in rep["violations"]]
        assert bad == [("L3", "L1")] and rep["violations"][0]["count"] == 6
    finally:
        f.close()


def test_divergence_stops_the_phase_and_names_node_and_step(ray_session):
    """An Euler step dt = 2.5 > 2 makes s_{t+1} ~ (1 - dt) s_t grow without bound."""
    unstable = LayeredModel("energy", (4, 6, 3), "sigmoid", dt=2.5)
    f = FabricEngine(unstable, settings())
    try:
        params = scaled_params(unstable)
        f.set_params(params)
        x, y = batch(unstable)
        f.set_batch(x, y)
        with pytest.raises(FabricError, match=r"node L\d, phase free, step \d+: state diverged"):
            f.run_phase("free", 50, 0.0, "zero")
        with pytest.raises(FloatingPointError, match=r"node L\d, phase free, step \d+: state diverged"):
            e = ReferenceEngine(unstable, "ep", torch.float64)
            e.set_params(params)
            e.set_batch(x, y)
            e.run_phase("free", 50, 0.0, "zero")
    finally:
        f.close()


@pytest.mark.parametrize("transport", ["zmq", "ray"])
def test_a_node_that_never_answers_is_named_and_the_fabric_goes_on(ray_session, transport):
    """A phase started on L1 alone waits for L2, which never runs it: the call times out naming L1, the abort
    stops L1's wait, and the next full phase runs normally. On ZeroMQ the actor runs one call at a time and the
    abort comes as a message on its socket: L1's log shows it, and L1 answers the next call long before its own
    30 s phase timeout."""
    f = FabricEngine(MODEL, settings(transport=transport))
    try:
        f.set_params(scaled_params(MODEL))
        f.set_batch(*batch(MODEL))
        with pytest.raises(FabricError, match=r"run_phase: no answer from nodes \['L1'\] within 1 s"):
            f.fabric.call("run_phase", 99, "free", 5, 0.0, "zero", nodes=["L1"], timeout_s=1.0)
        if transport == "zmq":
            log = f.fabric.call("message_log", nodes=["L1"], timeout_s=10.0)["L1"]
            assert [c[:5] for c in log["counters"] if c[3] == "abort"] == [["coordinator", "L1", "control", "abort", 1]]
        assert np.isfinite(f.run_phase("free", 5, 0.0, "zero")["residual"])
    finally:
        f.close()
