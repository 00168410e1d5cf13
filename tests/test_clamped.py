"""Contrastive (`cl`) and coupled (`cpl`) learning (nodes/clamped.py, protocols/contrastive.py, protocols/coupled.py,
docs/families/clamped.md): the fabric computes what the in-process engine computes; the output is held at the clamp
at every step while the other layers relax, and the estimate is the contrast of G at the two saved states; coupled
learning's one-sided estimate approaches its eta -> 0 limit at order 1 (centred: 2), and that limit is the gradient
of the H-weighted cost the theory predicts, not EP's gradient; bad settings are refused by name."""
import pytest
import torch

from cluster.runtime.coordinator import FabricEngine
from cluster.inprocess import ReferenceEngine
from experiments.clamped_sweep import sweep
from nodes.layered import layered, layered_asym
from tests.conftest import batch, scaled_params

EPS = torch.finfo(torch.float64).eps
# Two hidden layers, so that the clamped phase has something to relax (with one, the hidden layer's drive is fixed by
# x and the clamp and it settles in one step); sigmoid prototypical settles to rounding in 60 steps here.
PROTO = layered("prototypical", (4, 6, 5, 3), "sigmoid")
ENERGY = layered("energy", (4, 6, 3), "sigmoid", dt=0.5)
T = {PROTO: (60, 60), ENERGY: (200, 200)}
ETA = {"cl": 1.0, "cpl": 0.3}


def run(engine, model, protocol, eta, x, y):
    """free, then the clamped phase with its states recorded: (clamped phase's record, estimate, saved states)."""
    T1, T2 = T[model]
    try:
        engine.set_params(scaled_params(model))
        engine.set_batch(x, y)
        free, clamped = engine.program(eta, T1, T2)
        engine.begin()
        engine.run_phase(free)
        rec = engine.run_phase(clamped, record_states=True)
        return rec, engine.estimate(), {n: engine.states(n) for n in ("free", "clamped")}
    finally:
        engine.close()


# ---- (a) the fabric and the in-process engine ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["layer", "neuron"])
@pytest.mark.parametrize("protocol", ["cl", "cpl"])
@pytest.mark.parametrize("model", [PROTO, ENERGY], ids=["prototypical", "energy"])
def test_the_fabric_computes_exactly_what_the_in_process_engine_computes(model, protocol, granularity):
    """Same partition, same local rule, same order of every sum: equal to the bit (float64), states and estimate.
    The fabric's hosts run in-process here (threads, the local transport); the next test runs Ray actors."""
    x, y = batch(model)
    fab = FabricEngine(model, protocol, dict(granularity=granularity, lr=[0.0] * (len(model.groups) - 1),
                                             dtype="float64", timeout_s=20.0), local=True)
    ref = ReferenceEngine(model, protocol, torch.float64, granularity=granularity)
    rf, ef, sf = run(fab, model, protocol, ETA[protocol], x, y)
    rr, er, sr = run(ref, model, protocol, ETA[protocol], x, y)
    assert all(torch.equal(ef[k], er[k]) for k in er)
    assert all(torch.equal(a, b) for a, b in zip(rf["states"], rr["states"], strict=True))
    assert all(torch.equal(a, b) for n in sr for a, b in zip(sf[n], sr[n], strict=True))
    assert rf["residual"] == rr["residual"]


@pytest.mark.slow
def test_a_ray_fabric_runs_cpl_with_the_signal_alone_and_equals_the_in_process_engine(ray_session):
    """Neuron partition on 2 Ray host actors, ZeroMQ: the estimate equals the in-process engine's to the bit, and
    every edge carries signals only, one per step and one last exchange per phase (no new message kind). (`cl` runs
    the same rule at eta = 1; tests/test_fabric.py runs every registered protocol on such a fabric.)"""
    from cluster.locality import locality_report
    x, y = batch(ENERGY)
    T1, T2 = 20, 10
    fab = FabricEngine(ENERGY, "cpl", dict(granularity="neuron", hosts=2, lr=[0.0, 0.0], dtype="float64",
                                           transport="zmq", timeout_s=30.0))
    ref = ReferenceEngine(ENERGY, "cpl", torch.float64, granularity="neuron")
    try:
        for e in (fab, ref):
            e.set_params(scaled_params(ENERGY))
            e.set_batch(x, y)
            e.run_program(e.program(ETA["cpl"], T1, T2))
        got, want = fab.estimate(), ref.estimate()
        rep = locality_report(fab.specs, fab.message_logs(), fab.protocol)
    finally:
        fab.close()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert rep["violations"] == [] and rep["per_edge"]
    assert all(v == {"a": T1 + 1 + T2 + 1} for v in rep["per_edge"].values())
    assert sorted(rep["globals"]) == ["batch", "beta", "protocol"]


# ---- (b) the clamp ---------------------------------------------------------------------------------------------
def G(signals, x):
    """G = dE/dtheta of the layered net at the states whose signals are `signals` (one per dynamic layer, the input's
    signal is x): G_W{n} = -a_{n+1}^T a_n / B, G_b{n} = -mean a_{n+1} (nodes/rules.NodeRule.G)."""
    a = [x, *signals]
    B = x.shape[0]
    out = {}
    for n in range(len(a) - 1):
        out[f"W{n}"] = -a[n + 1].T @ a[n] / B
        out[f"b{n}"] = -a[n + 1].mean(0)
    return out


@pytest.mark.parametrize("protocol", ["cl", "cpl"])
@pytest.mark.parametrize("model", [PROTO, ENERGY], ids=["prototypical", "energy"])
def test_the_output_is_held_at_the_clamp_at_every_step_and_the_estimate_contrasts_G(model, protocol):
    from nodes.dynamics import physics_of
    eta = ETA[protocol]
    x, y = batch(model)
    rec, est, saved = run(ReferenceEngine(model, protocol, torch.float64, granularity="neuron"), model, protocol,
                          eta, x, y)
    s_free, s_clamped = saved["free"], saved["clamped"]
    out = rec["states"][-1]  # (T2 + 1, B, d_out): the output layer at the clamped phase's start and every step
    assert out.shape[0] == T[model][1] + 1
    if protocol == "cl":
        assert all(torch.equal(o, y) for o in out)  # held at y itself, not near it
    else:  # s_free + eta (y - s_free): two roundings on either side, each within eps of the largest magnitude
        want = s_free[-1] + eta * (y - s_free[-1])
        assert float((out - want).abs().max()) <= 4 * EPS * max(1.0, float(want.abs().max()))
        assert float((want - y).abs().max()) > 0.1  # a partial clamp, far from y
    for h in range(len(s_free) - 1):  # the hidden layers relaxed to a new state
        assert float((s_clamped[h] - s_free[h]).abs().max()) > 1e-3
    signal = physics_of(model).signal
    g_c, g_f = G([signal(s) for s in s_clamped], x), G([signal(s) for s in s_free], x)
    # The rule stacks both states along the batch in one product; here two products: entries are sums of 2B terms
    # each within max|G|, so they differ by at most 2B eps max|G|, then divided by eta.
    top = max(float(v.abs().max()) for v in (*g_c.values(), *g_f.values()))
    for k in est:
        assert float((est[k] - (g_c[k] - g_f[k]) / eta).abs().max()) <= 2 * x.shape[0] * EPS * top / eta, k


# ---- (c) coupled learning as eta -> 0 ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model", [PROTO, ENERGY], ids=["prototypical", "energy"])
def test_coupled_learning_is_first_order_in_eta_and_its_limit_is_the_H_weighted_gradient(model):
    """Theory (protocols/coupled.py): with F(c) = E minimised over the hidden units at output c, H = d2F/dc2 and
    K = d2F/(dtheta dc) at the free state, CpL(eta) = K (y - s0_out) + O(eta) (centred difference: O(eta^2)), and
    the limit is the gradient of 1/2 (s_out - y)^T H (s_out - y) with H held fixed, while dL/dtheta = K H^-1 (y -
    s0_out). The limit is taken as the centred difference at eta0 = 1e-4.

    Orders: log-log slopes over eta = 0.02 .. 0.0025, where the next order's share of each error is a few percent
    at most (the fitted slope then lies within 0.05 of the order; the competing order is a whole unit away).
    The limit's identity: its error is the centred one at eta0, constant * eta0^2 with the constant measured by the
    sweep itself (10x room), plus rounding (eps |G| / eta0 ~ 1e-12)."""
    x, y = batch(model)
    T1, T2 = T[model]
    r = sweep(model, scaled_params(model), x, y, T1, T2, etas=(0.02, 0.01, 0.005, 0.0025), eta0=1e-4)
    assert abs(r["one_sided_slope"] - 1) <= 0.05, r["one_sided_error"]
    assert abs(r["centred_slope"] - 2) <= 0.05, r["centred_error"]
    assert r["limit_vs_target"]["rel_l2"] <= 10 * r["centred_constant"] * r["eta0"] ** 2 + 1e-10
    assert r["ep_vs_bptt"]["rel_l2"] <= 1e-6  # the free phase settled: EP's centred estimate is BPTT's gradient
    if model is PROTO:  # H far from a multiple of I: the limit is not the gradient, to far more than its errors
        assert r["H"]["eig_max"] / r["H"]["eig_min"] >= 1.2
        assert r["limit_vs_bptt"]["rel_l2"] >= 1e-3


# ---- (d) bad settings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, sets, field", [
    ("cpl-digits", ["beta=0"], "beta"),
    ("cpl-digits", ["beta=1.5"], "beta"),
    ("cl-digits", ["beta=0.5"], "beta"),
    ("cpl-digits", ["model=vector-field"], "model"),
    ("cl-digits", ["model=prototypical-asym"], "model"),
    ("cpl-digits", ["steps=true"], "steps"),
])
def test_bad_settings_are_refused_by_name(config, sets, field):
    from experiments.config import ConfigError, load_config
    with pytest.raises(ConfigError) as err:
        load_config(config, sets)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


def test_the_python_api_refuses_a_directed_net_and_a_program_at_a_bad_eta():
    model = layered_asym((4, 6, 3), "tanh", physics="vector-field")
    with pytest.raises(ValueError, match=r"^model: protocol cpl clamps the output of an energy-based net"):
        ReferenceEngine(model, "cpl", torch.float64)
    with pytest.raises(ValueError, match=r"^beta: protocol cl clamps the output at y"):
        ReferenceEngine(PROTO, "cl", torch.float64).program(0.5, 10, 10)
    with pytest.raises(ValueError, match=r"^beta: must be non-zero for protocol cpl"):
        ReferenceEngine(PROTO, "cpl", torch.float64).program(0.0, 10, 10)


def test_the_audit_of_cpl_digits_runs_and_reads_as_an_alignment(tmp_path):
    """The shipped config through the API the CLI calls (in-process engine here; the fabric is the tests above): the
    free phase settled (implicit differentiation agrees with BPTT) and the cosine is below 1
    (docs/families/clamped.md)."""
    from experiments.api import Simulator
    rep = Simulator(config="cpl-digits").audit(out=str(tmp_path), engine="reference", batch=8)
    assert (tmp_path / "audit.json").is_file()
    assert rep["implicit"]["converged"] and 0.5 < rep["total"]["cosine"] < 1.0
