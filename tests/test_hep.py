"""Holomorphic EP (`hep`, `hep-fast`; docs/algorithms.md §1 and §7) on the `hep-toy` config: N = 2 is `ep-symmetric`,
the fast variant is the plain one, the error to BPTT falls as |beta|^N, and a single non-holomorphic operation
turns that into a bias that does not vanish."""
import numpy as np
import pytest
import torch

from cluster.audit import compare
from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import FabricEngine
from cluster.inprocess import ReferenceEngine
from experiments.audit import audit_batch
from experiments.config import ConfigError, load_config
from experiments.sweep import run_sweep
from nodes.dynamics import physics_of
from protocols import get_protocol
from tests.conftest import estimate_once

CFG = load_config("hep-toy")


def toy():
    from cluster.launch import model_from
    model = model_from(CFG)
    x, y, params = audit_batch(CFG, model)
    return model, x, y, params


MODEL, X, Y, PARAMS = toy()
TRUTH = bptt_grad(MODEL, PARAMS, X, Y, CFG.T1)


def estimate(name, N, beta, engine=None, T=300):
    e = engine or ReferenceEngine(MODEL, get_protocol(name).configured(N=N), torch.float64)
    return estimate_once(e, PARAMS, X, Y, beta, T, T)


def err(g):
    return compare(g, TRUTH)["total"]["rel_l2"]


def gap(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in b)


@pytest.mark.slow
def test_two_points_are_symmetric_ep_and_the_fast_variant_is_the_plain_one():
    assert gap(estimate("hep", 2, 0.2), estimate("ep-symmetric", 2, 0.2)) <= 1e-12
    for N in range(2, 11):
        assert gap(estimate("hep-fast", N, 0.2), estimate("hep", N, 0.2)) <= 1e-12, N
    assert len(get_protocol("hep-fast").configured(N=10).program(0.1, 1, 1)) == 1 + 6  # 4 complex + 2 real runs


@pytest.mark.slow
def test_the_error_falls_as_beta_to_the_n(tmp_path):
    res = run_sweep(CFG, str(tmp_path / "s"), ["beta=0.05,0.1,0.2,0.4", "N=2,4,8"])
    slopes = {s["group"]["N"]: s["slope"] for s in res["slopes"]}
    for N in (2, 4, 8):
        assert abs(slopes[N] - N) <= 0.5, (N, slopes[N])
    at = {(p["N"], p["beta"]): p["rel_l2"] for p in res["points"]}
    assert at[8, 0.1] <= 1e-7, at[8, 0.1]


def _re_sigmoid(phys):
    """z -> sigma(Re z) (and its derivative) in complex dtype: identical on the real axis, not holomorphic."""
    rho, rho_prime = phys.rho, phys.rho_prime
    phys.rho = lambda z: rho(z.real).to(z.dtype) if z.is_complex() else rho(z)
    phys.rho_prime = lambda z: rho_prime(z.real).to(z.dtype) if z.is_complex() else rho_prime(z)
    return phys


def broken_engine(N):
    e = ReferenceEngine(MODEL, get_protocol("hep").configured(N=N), torch.float64)
    e.nodes.rules["L2"].phys = _re_sigmoid(physics_of(MODEL))  # one hidden layer only
    return e


@pytest.mark.slow
def test_one_non_holomorphic_layer_leaves_a_bias_that_does_not_vanish():
    betas = (0.025, 0.05, 0.1)
    assert gap(estimate("hep", 2, 0.1, broken_engine(2)), estimate("hep", 2, 0.1)) <= 1e-12  # N = 2 cannot see it
    for N in (4, 8):
        good = [err(estimate("hep", N, b)) for b in betas]
        bad = [err(estimate("hep", N, b, broken_engine(N))) for b in betas]
        assert good[0] <= 1e-6, (N, good)
        assert min(bad) >= 1e-3, (N, bad)
        assert np.polyfit(np.log(betas), np.log(bad), 1)[0] < 1, (N, bad)


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(granularity="layer"), dict(granularity="neuron", hosts=2)],
                         ids=["layer", "neuron-hosts2"])
def test_fabrics_equal_the_in_process_engine_in_complex_arithmetic(where, ray_session):
    proto = get_protocol("hep").configured(N=4)
    fab = FabricEngine(MODEL, proto, dict(lr=[0.0] * 3, dtype="float64", transport="zmq", timeout_s=20.0, **where))
    assert gap(estimate("hep", 4, 0.2, fab, T=60), estimate("hep", 4, 0.2, T=60)) <= 1e-12


@pytest.mark.parametrize("sets,field", [(["protocol=hep", "activation=hardsigmoid"], "activation"),
                                        (["protocol=hep-fast", "activation=hardsigmoid"], "activation"),
                                        (["protocol=hep", "N=1"], "N"), (["protocol=hep", "beta=0"], "beta"),
                                        (["protocol=hep-osc", "periods=0"], "periods")])
def test_bad_hep_settings_are_refused_by_name(sets, field):
    with pytest.raises(ConfigError) as err_:
        load_config("train", sets)
    assert err_.value.field == field, str(err_.value)


@pytest.mark.slow
def test_a_sweep_too_short_to_fit_says_so(tmp_path):
    res = run_sweep(CFG, str(tmp_path / "s"), ["beta=0.1,0.2,0.4", "N=2"])
    (s,) = res["slopes"]
    assert s["slope"] is None and "not fitted" in s["note"] and s["points"] == 3


def osc_estimate(N, beta, T2, periods=3, engine=None):
    e = engine or ReferenceEngine(MODEL, get_protocol("hep-osc").configured(N=N, periods=periods), torch.float64)
    try:
        e.set_params(PARAMS)
        e.set_batch(X, Y)
        e.run_program(e.program(beta, CFG.T1, T2))
        return e.estimate()
    finally:
        e.close()


@pytest.mark.slow
def test_the_oscillation_with_converged_segments_is_hep():
    for N in (4, 10):
        assert compare(osc_estimate(N, 0.4, 300), estimate("hep", N, 0.4))["total"]["rel_l2"] <= 1e-8, N


@pytest.mark.slow
def test_the_oscillation_runs_alike_on_a_hosted_neuron_fabric_with_its_clock_global(ray_session, tmp_path):
    from experiments.api import Simulator
    proto = get_protocol("hep-osc").configured(N=4, periods=2)
    fab = FabricEngine(MODEL, proto, dict(lr=[0.0] * 3, dtype="float64", transport="zmq", timeout_s=20.0,
                                          granularity="neuron", hosts=2))
    assert gap(osc_estimate(4, 0.3, 30, 2, fab), osc_estimate(4, 0.3, 30, 2)) <= 1e-12
    rep = Simulator(config="hep-toy", protocol="hep-osc", N=4, periods=2, T2=30, engine="fabric",
                    granularity="neuron", hosts=2).audit(out=str(tmp_path / "a"))
    loc = rep["locality"]
    assert loc["violations"] == [] and {"N", "periods", "beta"} <= set(loc["globals"])
    assert {k for kinds in dict(loc["per_edge"]).values() for k in kinds} == {"a"}
    assert set(loc["boundary"]["y"]) == {i for i in loc["boundary"]["y"] if i.startswith("L3")}


def test_a_trained_oscillation_is_evaluated_by_free_inference():
    """Training reads the oscillation's (nudged) end state; evaluation runs the plain free phase, where the clock's
    segment-end accumulation must not run (it has no period)."""
    e = ReferenceEngine(MODEL, get_protocol("hep-osc").configured(N=4, periods=1), torch.float64,
                        lrs={k: 0.05 for k in PARAMS})
    e.set_params(PARAMS)
    e.train_batch(X, Y, 0.4, 300, 30)
    from cluster.inprocess import relax
    assert float((e.infer(X, 40) - relax(MODEL, e.get_params(), X, 40)[-1]).abs().max()) <= 1e-12


@pytest.mark.slow
def test_the_oscillation_predicts_the_free_state_to_order_beta_to_the_n():
    """The prediction is the mean of the last period's segment-end states (their zeroth Fourier coefficient): the free
    state up to O(|beta|^N), so halving |beta| divides its error by about 2^N."""
    from cluster.inprocess import relax
    free = relax(MODEL, PARAMS, X, 300)[-1]
    errs = []
    for b in (0.1, 0.2):
        e = ReferenceEngine(MODEL, get_protocol("hep-osc").configured(N=4, periods=2), torch.float64)
        e.set_params(PARAMS)
        errs.append(float((e.train_batch(X, Y, b, 300, 300) - free).abs().max()))
    assert 1e-9 < errs[0] < 1e-3 and 12 < errs[1] / errs[0] < 20, errs  # measured: 1.0e-4, ratio 16.0
