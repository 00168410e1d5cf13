"""The fabric (host actors, ZeroMQ or Ray transport, any partition, any placement) computes exactly what the
in-process engine computes: same trajectory at every step, same estimate, same weights after training."""
import numpy as np
import pytest
import torch

from cluster.runtime.coordinator import FabricEngine
from cluster.runtime.fabric import FabricError, place
from cluster.nodeset import PhaseError
from cluster.inprocess import ReferenceEngine
from nodes.layered import layered, layered_asym
from protocols import PROTOCOLS, get_protocol
from protocols.base import Phase
from tests.conftest import batch, rel, scaled_params

# One hidden layer keeps every gradient within a few orders of G's size: an estimate divides a difference
# of G's by beta, so rounding in it is about 1e-16 |G| / (beta |g|) relative to g.
MODEL = layered("energy", (4, 6, 3), "sigmoid", dt=0.5)
LR = [0.05, 0.1]


def settings(**kw):
    s = dict(granularity="layer", lr=LR, dtype="float64", transport="zmq", log="counters", timeout_s=30.0)
    s.update(kw)
    return s


def reference(protocol="ep-symmetric", params=None, model=MODEL):
    from cluster.runtime.coordinator import lrs_by_param
    e = ReferenceEngine(model, protocol, torch.float64, lrs_by_param(model, LR))
    e.set_params(params or scaled_params(model))
    return e


FABRICS = [dict(granularity="layer"), dict(granularity="neuron"), dict(granularity="layer", split=2),
           dict(granularity="neuron", hosts=2), dict(granularity="neuron", hosts=1),
           dict(granularity="neuron", hosts=2, wire="tcp"), dict(granularity="layer", transport="ray"),
           dict(granularity="neuron", hosts=2, transport="ray"), dict(granularity="layer", wire="tcp")]


@pytest.fixture(scope="module", params=FABRICS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def fabric(request, ray_session):
    f = FabricEngine(MODEL, "ep-symmetric", settings(**request.param, log="full"))
    yield f
    f.close()


@pytest.mark.slow
def test_fabric_trajectory_matches_reference(fabric):
    x, y = batch(MODEL)
    ref = reference()
    fabric.set_params(scaled_params(MODEL))
    for e in (ref, fabric):
        e.set_batch(x, y)
    for ph in (Phase("free", 25), Phase("plus", 8, 0.1, "free"), Phase("minus", 8, -0.1, "free")):
        a, b = ref.run_phase(ph, record_states=True), fabric.run_phase(ph, record_states=True)
        top = max(float(t.abs().max()) for t in a["states"])
        assert abs(a["residual"] - b["residual"]) <= 1e-12 * top  # a difference of two states, each within 1e-12
        for sa, sb in zip(a["states"], b["states"], strict=True):  # (steps+1, B, d_n): every step, every layer
            assert sa.shape == sb.shape
            err = ((sa - sb).flatten(1).norm(dim=1) / sa.flatten(1).norm(dim=1).clamp_min(1e-300)).max()
            assert err <= 1e-12, (ph.name, float(err))


def test_fabric_estimate_matches_reference_and_is_local(fabric):
    from cluster.locality import locality_report
    x, y = batch(MODEL, seed=3)
    ref = reference()
    fabric.set_params(scaled_params(MODEL))
    fabric.message_logs(clear=True)
    program = get_protocol("ep-symmetric").program(1e-2, 30, 10)
    for e in (ref, fabric):
        e.set_batch(x, y)
        e.run_program(program)
    ga, gb = ref.estimate(), fabric.estimate()
    for k in ga:
        assert rel(gb[k], ga[k]) <= 1e-12, k
    rep = locality_report(fabric.specs, fabric.message_logs(), get_protocol("ep-symmetric"))
    assert rep["violations"] == []
    assert rep["messages"] > 0 and rep["edges"] == rep["legal_edges"]
    assert rep["globals"]["beta"] == len(fabric.specs)  # beta reached every node, logged as global at each
    assert rep["boundary"] == {"x": sorted(i for i in fabric.specs if i.startswith("L1")),
                               "y": sorted(i for i in fabric.specs if i.startswith("L2"))}


@pytest.mark.slow
def test_training_on_fabric_equals_reference_and_replicas_agree(fabric):
    ref = reference()
    fabric.set_params(scaled_params(MODEL))
    for i in range(4):  # phase calls each, then one call per batch (train_batch): the same arithmetic
        x, y = batch(MODEL, seed=10 + i)
        if i < 2:
            for e in (ref, fabric):
                e.set_batch(x, y)
                e.run_program(e.program(0.1, 20, 6))
                e.update()
        else:
            out_a, out_b = (e.train_batch(x, y, 0.1, 20, 6) for e in (ref, fabric))
            assert out_a.shape == out_b.shape == y.shape and rel(out_b, out_a) <= 1e-12
    pa, pb = ref.get_params(), fabric.get_params()
    for k in pa:
        assert rel(pb[k], pa[k]) <= 1e-12, k
    assert set(fabric.replica_drift()) == {"W1"}  # both ends of W1 updated their own copy from what they saw
    assert max(fabric.replica_drift().values()) <= 1e-15 and max(ref.replica_drift().values()) <= 1e-15


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["reference", "fabric"])
def test_a_changed_replica_shows_as_drift_and_is_used(engine, ray_session):
    """Perturb the replica of W1 that L1 holds (its columns), not the owner's rows: the drift shows it, L1's
    relaxation uses it (the free state moves), and a training batch keeps it: both ends compute their update from
    the same two signals, so the updates agree while the copies stay apart."""
    from cluster.messages import pack_arrays, unpack_arrays
    e = reference() if engine == "reference" else FabricEngine(MODEL, "ep-symmetric", settings())
    try:
        e.set_params(scaled_params(MODEL))
        x, y = batch(MODEL)
        e.set_batch(x, y)
        e.run_phase(Phase("free", 20))
        before = e.output("free")
        flat = unpack_arrays(e.get_state()["L1"])
        flat["param/W1"] = flat["param/W1"] + 1e-3
        e.set_state({"L1": pack_arrays(flat)})
        assert e.replica_drift() == {"W1": pytest.approx(1e-3, rel=1e-9)}
        e.run_phase(Phase("free", 20))
        assert float((e.output("free") - before).abs().max()) > 1e-6
        e.train_batch(x, y, 0.1, 20, 6)
        assert e.estimate_drift() == {"W1": 0.0}
        assert e.replica_drift() == {"W1": pytest.approx(1e-3, rel=1e-9)}
    finally:
        e.close()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_protocol_runs_on_a_hosted_neuron_fabric(protocol, ray_session):
    from cluster.locality import locality_report
    from experiments.sequences import forces
    from nodes.hamiltonian import chain
    p = get_protocol(protocol)
    m = (layered_asym((3, 3, 2), "sigmoid") if "prototypical-asym" in p.models
         else layered_asym((3, 3, 2), "tanh", physics="vector-field") if "vector-field" in p.models
         else layered("prototypical", (3, 3, 2), "sigmoid"))
    x, y = batch(m)
    ref = None
    if "chain" in p.models:  # Hamiltonian echo: a 4-mass chain, sequences of 10 steps; the in-process engine on the
        m = chain(4, dt=0.1, spread=0.3)  # same partition (an echo's contrast amplifies a sum's order by 1/eps)
        x, y = forces(6, 10, 0.1, 0), 0.1 * forces(6, 10, 0.1, 1)
        ref = ReferenceEngine(m, protocol, torch.float64, granularity="neuron")
        ref.set_params(scaled_params(m))
    f = FabricEngine(m, protocol, settings(granularity="neuron", hosts=2, lr=LR))
    ref = ref or reference(protocol, scaled_params(m), model=m)
    try:
        f.set_params(scaled_params(m))
        beta = p.batch_beta(0.1, np.random.default_rng(1))
        for e in (f, ref):
            e.set_batch(x, y)
            e.run_program(e.program(beta, 10, 4))
        g, want = f.estimate(), ref.estimate()
        assert all(rel(g[k], want[k]) <= 1e-12 for k in want)
        rep = locality_report(f.specs, f.message_logs(), p)
        assert rep["violations"] == [] and rep["messages"] > 0 and len(set(rep["placement"].values())) == 2
        assert rep["coordinator"]["boundary"] > 0 and rep["coordinator"]["control"] > 0
    finally:
        f.close()


def test_placement_is_round_robin():
    assert place(["a", "b", "c"], 0) == {"a": "a", "b": "b", "c": "c"}
    assert place(["a", "b", "c"], 2) == {"a": "H0", "b": "H1", "c": "H0"}


@pytest.mark.slow
def test_divergence_stops_the_phase_and_names_node_and_step(ray_session):
    """An Euler step dt = 2.5 > 2 makes s_{t+1} ~ (1 - dt) s_t grow without bound."""
    unstable = layered("energy", (4, 6, 3), "sigmoid", dt=2.5)
    f = FabricEngine(unstable, "ep", settings())
    try:
        params = scaled_params(unstable)
        f.set_params(params)
        x, y = batch(unstable)
        f.set_batch(x, y)
        with pytest.raises(PhaseError, match=r"node L\d: run_phase failed: .*node L\d, phase free, step \d+: "
                                              r"state diverged"):
            f.run_phase(Phase("free", 50))
        e = reference("ep", params, model=unstable)
        e.set_batch(x, y)
        with pytest.raises(PhaseError, match=r"node L\d, phase free, step \d+: state diverged"):
            e.run_phase(Phase("free", 50))
    finally:
        f.close()


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["zmq", "ray"])
def test_a_node_that_never_answers_is_named_and_the_fabric_goes_on(ray_session, transport):
    """A phase started on L1 alone waits for L2, which never runs it: L1's own wait times out naming L2, and the
    next full phase runs normally."""
    f = FabricEngine(MODEL, "ep-symmetric", settings(transport=transport, timeout_s=1.0))
    try:
        f.set_params(scaled_params(MODEL))
        f.set_batch(*batch(MODEL))
        only_l1 = {h: (f.fabric.new_serials(), Phase("free", 5), False, False) for h in ["L1"]}
        with pytest.raises(FabricError, match=r"node L1: run_phase failed: .*no message from \['L2'\] within 1 s"):
            f.fabric.call("run_phase", per_host=only_l1)
        assert np.isfinite(f.run_phase(Phase("free", 5))["residual"])
    finally:
        f.close()


@pytest.mark.slow
def test_a_stuck_host_is_caught_by_its_missing_heartbeat(ray_session):
    """A host stuck in a call (here: sleeping) sends no heartbeat; the call fails naming it after timeout_s + 30 s
    would be too long for a test, so the stall limit is lowered for this one call."""
    import time
    f = FabricEngine(MODEL, "ep-symmetric", settings())
    try:
        t0 = time.monotonic()
        with pytest.raises(FabricError, match=r"__ray_call__: no answer and no heartbeat from node L2 for 2 s"):
            f.fabric.call("__ray_call__", per_host={"L1": (lambda self: None,),
                                                    "L2": (lambda self: time.sleep(30),)}, stall_s=2.0)
        assert time.monotonic() - t0 < 10
    finally:
        f.fabric.hosts.pop("L2", None)  # its actor is still asleep: kill it rather than wait for close()
        f.close()


@pytest.mark.slow
def test_a_curve_data_plane_trains_as_the_in_process_engine(ray_session):
    """fabric.curve=true: every connection encrypted and authenticated by its issued key; the same updates."""
    from cluster.locality import locality_report
    from cluster.launch import make_engine
    from experiments.config import load_config
    sets = ["sizes=[64,8,10]", "dtype=float64", "granularity=neuron", "fabric.hosts=2", "fabric.curve=true"]
    engines = [make_engine(load_config("train", sets)), make_engine(load_config("train", sets + ["engine=reference"]))]
    params = engines[0].model.init_params(0, torch.float64, 2.0)
    x, y = batch(engines[0].model, B=5)
    out = []
    try:
        for e in engines:
            e.set_params(params)
            e.train_batch(x, y, 0.2, 10, 4)
            out.append(e.get_params())
        rep = locality_report(engines[0].specs, engines[0].message_logs(), engines[0].protocol)
        assert rep["messages"] > 0 and not rep["violations"]
        assert all(isinstance(a, tuple) and len(a[1]) == 40 for a in engines[0].fabric.addresses.values())  # keys
    finally:
        for e in engines:
            e.close()
    for k, ref in out[1].items():
        assert rel(out[0][k], ref) <= 1e-12, k
