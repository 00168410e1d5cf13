"""The node protocols `aep`, `aep-symmetric` and `dyadic` (nodes/nonreciprocal.py, docs/algorithms.md §9): each node's
estimate equals the centralised reference's (cluster/truth/nonconservative.py) on §13's toy and on layered vector fields,
feed-forward included; fabrics equal the in-process engine with the extra kinds listed per edge and no violation;
the orders in beta hold against implicit differentiation; the gate reads d; bad input is refused by name."""
import pytest
import torch

from cluster.audit import compare
from cluster.runtime.coordinator import FabricEngine
from cluster.truth.nonconservative import estimate, t1_toy
from cluster.inprocess import ReferenceEngine
from nodes.layered import layered_asym
from tests.conftest import estimate_once
from tests.test_hep import gap

TOY = t1_toy()
PROTOCOLS = ("vf", "aep", "aep-symmetric", "dyadic")


def tied(feedback=True):
    """A layered vector field 4-6-3 with B = W^T at the start (tanh: rho' varies, so J is not symmetric)."""
    model = layered_asym((4, 6, 3), "tanh", feedback, 0.2, "vector-field")
    gen = torch.Generator().manual_seed(5)
    return (model, model.init_params(2, torch.float64, 1.5), torch.randn(5, 4, generator=gen, dtype=torch.float64),
            torch.randn(5, 3, generator=gen, dtype=torch.float64))


def nodes_estimate(case, protocol, beta, T1, T2, granularity="layer"):
    model, params, x, y = case
    return estimate_once(ReferenceEngine(model, protocol, torch.float64, granularity=granularity), params, x, y,
                         beta, T1, T2)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["layer", "neuron"])
@pytest.mark.parametrize("case", ["toy", "tied", "feed-forward"])
def test_the_nodes_estimates_are_the_centralised_ones(case, granularity):
    """Rounding only: every quantity is O(1) and the sums differ in order, so 1e-12 absolute bounds it with room.
    Both sides run the same 200 steps per phase (settled or not, the same discrete dynamics are compared)."""
    c = {"toy": TOY, "tied": tied(), "feed-forward": tied(False)}[case]
    for protocol in PROTOCOLS:
        central = estimate(protocol, *c, 0.1, 200, 200)["grad"]
        assert gap(nodes_estimate(c, protocol, 0.1, 200, 200, granularity), central) <= 1e-12, protocol


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(granularity="neuron", hosts=2), dict(granularity="layer")],
                         ids=["neuron-hosts2", "layer"])
def test_fabrics_run_them_as_the_in_process_engine_and_list_their_kinds_per_edge(where, ray_session):
    from cluster.locality import locality_report
    model, params, x, y = TOY
    for protocol, kinds in (("aep-symmetric", {"a", "r", "t"}), ("dyadic", {"a", "t"})):
        fab = FabricEngine(model, protocol, dict(lr=[0.0], dtype="float64", transport="zmq", timeout_s=20.0, **where))
        try:
            fab.set_params(params)
            fab.set_batch(x, y)
            res = fab.run_program(fab.program(0.1, 200, 200))
            est, logs = fab.estimate(), fab.message_logs()
        finally:
            fab.close()
        ref = ReferenceEngine(model, protocol, torch.float64, granularity=where["granularity"])
        ref.set_params(params)
        ref.set_batch(x, y)
        want = ref.run_program(ref.program(0.1, 200, 200))
        assert gap(est, ref.estimate()) <= 1e-12, protocol
        assert {k: v["residual"] for k, v in res.items()} == pytest.approx({k: v["residual"] for k, v in want.items()},
                                                                           abs=1e-12)
        rep = locality_report(fab.specs, logs, fab.protocol)
        assert rep["violations"] == [] and all(set(v) == kinds for v in rep["per_edge"].values()), protocol
        steps = 200 + 1  # the learning phase's messages: one per step and the last exchange
        extra = [v for v in rep["per_edge"].values()]
        assert all(v["t"] == steps * (2 if protocol == "aep-symmetric" else 1) for v in extra)


def test_on_a_feed_forward_net_kind_t_runs_backwards_along_edges_that_carry_no_signal():
    model = tied(False)[0]
    specs = model.node_specs(model.partition("layer"), ("r", "t"))
    fwd = {(p.src, p.dst) for s in specs.values() for p in s.in_ports if p.kind == "a"}
    back = {(p.src, p.dst) for s in specs.values() for p in s.in_ports if p.kind == "t"}
    assert fwd == {("L1", "L2")} and back == {("L2", "L1")}
    assert model.legal_edges(model.partition("layer")) == fwd
    assert model.legal_edges(model.partition("layer"), ("r", "t")) == fwd | back


@pytest.mark.slow
def test_tied_weights_aep_symmetric_is_second_order_and_dyadic_exact_where_vf_plateaus():
    """Against implicit differentiation at the free state (the truth of a fixed-point model)."""
    c = tied()
    T = 1500
    truth = estimate("implicit", *c, 0.0, T, 0)["grad"]
    e = {(p, b): compare(nodes_estimate(c, p, b, T, T), truth)["total"]["rel_l2"]
         for p in PROTOCOLS for b in (0.04, 0.02)}
    assert 3.6 <= e[("aep-symmetric", 0.04)] / e[("aep-symmetric", 0.02)] <= 4.4
    assert 1.7 <= e[("aep", 0.04)] / e[("aep", 0.02)] <= 2.3
    assert e[("dyadic", 0.04)] <= 1e-10 and e[("dyadic", 0.02)] <= 1e-10
    assert e[("vf", 0.02)] >= 0.1 and 0.9 <= e[("vf", 0.04)] / e[("vf", 0.02)] <= 1.1


def test_aep_on_a_feed_forward_net_is_backprop():
    from cluster.truth.bptt import bptt_grad
    model, params, x, y = tied(False)
    truth = bptt_grad(model, params, x, y, 400)  # 400 Euler steps of dt 0.2: the free state to rounding
    assert compare(nodes_estimate((model, params, x, y), "aep-symmetric", 1e-3, 400, 400), truth)["total"][
        "cosine"] >= 0.9999
    assert compare(nodes_estimate((model, params, x, y), "vf", 1e-3, 400, 400), truth)["total"]["rel_l2"] >= 0.3


def test_the_dyadic_residual_reads_d_as_well_as_m():
    """m starts at the settled x0 and barely moves; d moves until J^T d = beta dC/dm: the gate must see it."""
    model, params, x, y = TOY
    e = ReferenceEngine(model, "dyadic", torch.float64)
    e.set_params(params)
    e.set_batch(x, y)
    res = e.run_program(e.program(0.1, 4000, 5))
    assert res["free"]["residual"] <= 1e-12 and res["dyadic"]["residual"] >= 1e-4


def test_bad_input_is_refused_by_name(tmp_path):
    from experiments.config import ConfigError, load_config
    from nodes.layered import layered
    for protocol, model in (("aep", "prototypical"), ("aep-symmetric", "prototypical-asym"), ("dyadic", "energy")):
        with pytest.raises(ConfigError) as err:
            load_config("audit", [f"protocol={protocol}", f"model={model}"])
        assert err.value.field == "model"
    with pytest.raises(ValueError, match="model: protocol aep runs on a vector-field model or an energy net"):
        ReferenceEngine(layered_asym((4, 5, 3), "tanh"), "aep", torch.float64)  # prototypical physics
    with pytest.raises(ValueError, match="model: protocol dyadic runs on a vector-field model, not physics 'energy'"):
        ReferenceEngine(layered("energy", (4, 5, 3), "tanh"), "dyadic", torch.float64)
    with pytest.raises(ValueError, match="carries kinds"):  # a phase with extra kinds needs a rule that sends them
        model, params, x, y = TOY
        e = ReferenceEngine(model, "vf", torch.float64)
        e.set_params(params)
        e.set_batch(x, y)
        e.run_program(get_protocol_program("aep"))


def get_protocol_program(name):
    from protocols import get_protocol
    return get_protocol(name).program(0.1, 2, 2)


def test_a_tied_vector_field_is_one_symmetric_parameter_with_the_untied_nets_draws():
    from cluster.truth.bptt import bptt_grad
    from cluster.launch import model_from
    from experiments.config import ConfigError, load_config
    cfg = load_config("compare-nonconservative", overrides={"sizes": [4, 6, 3], "feedback_init": "tied", "dt": 0.2,
                                                                    "protocol": "ep-symmetric"})
    t = model_from(cfg)
    assert t.name == "vector-field-tied" and set(t.param_shapes()) == {"W0", "b0", "W1", "b1"} and t.dt == 0.2
    model, params, x, y = tied()
    pt = {k: params[k] for k in t.param_shapes()}
    assert all(torch.equal(v, t.init_params(2, torch.float64, 1.5)[k]) for k, v in pt.items())
    # the same field while B1 = W1^T: the tied net's BPTT gradient is the untied one's with B1's folded into W1
    g, gt = bptt_grad(model, params, x, y, 100), bptt_grad(t, pt, x, y, 100)
    assert gap({"W1": gt["W1"], "b0": gt["b0"]}, {"W1": g["W1"] + g["B1"].T, "b0": g["b0"]}) <= 1e-12
    for protocol in ("aep", "dyadic"):
        for key, value in (("feedback_init", "tied"), ("noise", 0.05)):
            with pytest.raises(ConfigError) as err:
                load_config("compare-nonconservative", overrides={"protocol": protocol, key: value})
            assert err.value.field == key


def test_a_message_of_a_kind_the_phase_does_not_carry_is_refused():
    from cluster.runtime.message_log import MessageLog
    from cluster.messages import Dropped
    from cluster.runtime.ports import NodeInbox
    import numpy as np
    model = TOY[0]
    spec = model.node_specs(model.partition("layer"), ("r", "t"))["S"]
    box = NodeInbox(spec, MessageLog())
    box.start(1, "free", 10, (), "float64", 1)  # a free phase: the signal only
    box.accept("Y", "a", "free", 1, 0, "float64", [1, 3], np.zeros((1, 3)))
    assert box.complete(1, 0)
    with pytest.raises(Dropped, match="kind r, which this phase does not carry"):  # within the host: raised
        box.accept("Y", "r", "free", 1, 0, "float64", [1, 3], np.zeros((1, 3)))
    assert not box.accept("Y", "r", "free", 1, 1, "float64", [1, 3], bytes(24), user="HY")  # from the wire: dropped
    assert box.accept("Y", "t", "plus", 2, 0, "float64", [1, 9], bytes(72), user="HY")  # a phase ahead: kept
    box.start(2, "plus", 10, (), "float64", 1)  # ... until it starts, and it does not carry t
    assert not box.buffer and not box.complete(2, 0)
    assert [(e["user"], e["reason"], e["count"]) for e in box.log.drops.export()] == [("HY", "kind", 2),
                                                                                      ("Y", "stale", 1)]
    assert "kind t, which this phase does not carry" in box.log.drops.samples[-1]["why"]
    box = NodeInbox(spec, MessageLog())
    box.start(2, "plus", 10, ("r", "t"), "float64", 1)
    for kind, w in (("a", 3), ("r", 3), ("t", 9)):
        assert not box.complete(2, 0)
        box.accept("Y", kind, "plus", 2, 0, "float64", [1, w], np.ones((1, w)))
    got = box.take(2, 0, "plus", 1, torch.float64, {"a": torch.zeros(1, 9, dtype=torch.float64),
                                                     "r": torch.full((1, 9), 2.0, dtype=torch.float64)})
    assert set(got) == {"S.a", "Y.a", "S.r", "Y.r", "t.Y"} and got["S.r"].eq(2).all() and got["t.Y"].eq(1).all()


@pytest.mark.slow
def test_a_sweep_over_the_replayed_toy_fits_each_protocols_order(tmp_path):
    """1,000 steps per relaxation: at these betas every relaxation of the toy has settled to rounding by then (final
    residuals max |f| 1.9e-15 to 2.1e-15, measured; tests/test_nonconservative.py asserts the settling at 2,000)."""
    import json
    from tests.conftest import run_cli
    r = run_cli("sweep", "toy-nonconservative", "--grid", "protocol=aep,aep-symmetric", "--grid",
                "beta=0.2,0.1,0.05,0.025", "--set", "T1=1000", "--set", "T2=1000", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    slope = {s["group"]["protocol"]: s["slope"] for s in rep["slopes"]}
    assert 0.8 <= slope["aep"] <= 1.2 and 1.8 <= slope["aep-symmetric"] <= 2.2, slope
    bad = run_cli("sweep", "toy-nonconservative", "--grid", "lr=0.1,0.2", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "--grid" in bad.stderr and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_an_unsettled_learning_phase_fails_the_gated_audit_naming_node_phase_and_residual(tmp_path):
    import json
    from tests.conftest import run_cli
    r = run_cli("audit", "toy-nonconservative", "--set", "protocol=dyadic", "--set", "T1=1000", "--set", "T2=40",
                "--set", "residual_tol=1e-8", "--out", str(tmp_path / "a"))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "phase dyadic: node " in r.stderr and "residual" in r.stderr and "residual_tol 1e-08" in r.stderr
    assert "phase free" not in r.stderr  # the free phase settled
    ok = run_cli("audit", "toy-nonconservative", "--set", "protocol=dyadic", "--set", "T1=1000", "--set", "T2=1000",
                 "--set", "residual_tol=1e-8", "--out", str(tmp_path / "b"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    gate = json.loads((tmp_path / "b" / "audit.json").read_text())["gate"]
    assert gate["converged"] and set(gate["worst"]) == {"free", "dyadic"} and gate["worst"]["dyadic"]["node"] in "SY"


@pytest.mark.slow
def test_an_unstable_jacobian_at_the_free_state_is_reported_before_the_learning_phase(tmp_path):
    from tests.conftest import run_cli
    args = ["audit", "audit", "--set", "model=vector-graph", "--set", "sizes=[3,10,2]", "--set", "protocol=aep",
            "--set", "dataset=random", "--set", "dt=0.1", "--set", "T1=300", "--set", "T2=300", "--set",
            "activation=tanh", "--set", "engine=reference"]
    r = run_cli(*args, "--set", "init_scale=4", "--out", str(tmp_path / "a"))
    assert r.returncode == 0 and "Jacobian at the free state is unstable (max Re eig J = 0.25" in r.stderr
    r = run_cli(*args, "--set", "init_scale=2", "--out", str(tmp_path / "b"))
    assert r.returncode == 0 and "unstable" not in r.stderr


def energy_case():
    from nodes.layered import layered
    from tests.conftest import batch, scaled_params
    model = layered("energy", (4, 6, 3), "tanh", 0.2)
    return (model, scaled_params(model), *batch(model))


def phase_states(model, params, x, y, protocol, beta, T, where=None, tamper=None):
    """Every group's states over every phase of the protocol's program, and the estimate; `tamper(engine)` runs
    after the parameters are set (e.g. to make one replica differ from its owner)."""
    e = ReferenceEngine(model, protocol, torch.float64)
    e.set_params(params)
    if tamper:
        tamper(e)
    e.set_batch(x, y)
    e.begin()
    states = {ph.name: e.run_phase(ph, record_states=True)["states"] for ph in e.program(beta, T, T)}
    return states, e.estimate()


@pytest.mark.slow
def test_on_energy_the_anchor_vanishes_so_aep_nudges_as_ep_symmetric_and_the_estimates_part_as_beta_squared():
    """The anchor is computed from each end's own copy of W: it vanishes because the copies agree, not because the
    code skips it (a replica made to differ by 1e-3 moves the nudged states off ep-symmetric's)."""
    from cluster.truth.bptt import bptt_grad
    model, params, x, y = energy_case()
    T = 400
    aep, g_aep = phase_states(model, params, x, y, "aep-symmetric", 0.1, T)
    ep, g_ep = phase_states(model, params, x, y, "ep-symmetric", 0.1, T)
    assert max(float((a - b).abs().max()) for ph in ep for a, b in zip(aep[ph], ep[ph])) <= 1e-12
    diff = {}
    for beta in (0.1, 0.05, 0.025):
        a = phase_states(model, params, x, y, "aep-symmetric", beta, T)[1]
        b = phase_states(model, params, x, y, "ep-symmetric", beta, T)[1]
        diff[beta] = compare(a, b)["total"]["rel_l2"]
    assert 3.6 <= diff[0.1] / diff[0.05] <= 4.4 and 3.6 <= diff[0.05] / diff[0.025] <= 4.4, diff
    truth = bptt_grad(model, params, x, y, T)
    assert compare(g_aep, truth)["total"]["rel_l2"] <= 0.05

    def tamper(e):
        e.nodes.params["L1"]["W1"] += 1e-3  # L1's replica of W1 no longer equals L2's rows

    aep_t = phase_states(model, params, x, y, "aep-symmetric", 0.1, T, tamper=tamper)[0]
    ep_t = phase_states(model, params, x, y, "ep-symmetric", 0.1, T, tamper=tamper)[0]
    assert max(float((a - b).abs().max()) for a, b in zip(aep_t["plus"], ep_t["plus"])) >= 1e-6


@pytest.mark.slow
def test_aep_on_an_energy_fabric_is_the_in_process_engine_with_t_sent_both_ways(ray_session):
    from cluster.locality import locality_report
    model, params, x, y = energy_case()
    fab = FabricEngine(model, "aep-symmetric", dict(lr=[0.0, 0.0], dtype="float64", transport="zmq", timeout_s=20.0,
                                                    granularity="neuron", hosts=2))
    try:
        fab.set_params(params)
        fab.set_batch(x, y)
        fab.run_program(fab.program(0.1, 60, 60))
        est, logs = fab.estimate(), fab.message_logs()
    finally:
        fab.close()
    ref = nodes_estimate((model, params, x, y), "aep-symmetric", 0.1, 60, 60, "neuron")
    assert gap(est, ref) <= 1e-12
    rep = locality_report(fab.specs, logs, fab.protocol)
    assert rep["violations"] == [] and rep["per_edge"]["L1.0->L2.0"].keys() == {"a", "r", "t"}
    assert rep["per_edge"]["L2.0->L1.0"].keys() == {"a", "r", "t"}
    with pytest.raises(ValueError, match="runs on a vector-field model, not physics 'energy'"):
        ReferenceEngine(model, "dyadic", torch.float64)
