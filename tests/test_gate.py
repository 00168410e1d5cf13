"""The convergence gate (`residual_tol`; docs/algorithms.md §7 "Safety", §12.5) on `hep-toy` (energy 5-8-6-3): per-sample
residuals of every phase, non-converged samples dropped from the update, a diverging complex run falling back to
N = 2, the audit's and sweep's counts per |beta|."""
import json

import pytest
import torch

from cluster.runtime.coordinator import FabricEngine
from cluster.inprocess import ReferenceEngine
from experiments.sweep import run_sweep
from protocols import get_protocol
from protocols.hep import HolomorphicEP
from tests.conftest import run_cli
from tests.test_hep import CFG, MODEL, PARAMS, X, Y, gap

T, LR = 300, [0.05, 0.05, 0.05]
LRS = {k: 0.05 for k in PARAMS}


def engine(proto, tol=None):
    e = ReferenceEngine(MODEL, proto, torch.float64, lrs=LRS, residual_tol=tol)
    e.set_params(PARAMS)
    return e


def hep(N):
    return get_protocol("hep").configured(N=N)


def residuals(proto, beta):
    e = engine(proto, tol=1.0)
    e.set_batch(X, Y)
    res = e.run_program(e.program(beta, T, T))
    return {k: torch.tensor(v["residuals"]) for k, v in res.items()}


def trained(proto, x, y, beta):
    e = engine(proto)
    e.train_batch(x, y, beta, T, T)
    return e.get_params()


def test_residuals_are_per_sample_and_a_diverged_nudged_sample_is_inf():
    res = residuals(hep(3), 1.2)  # N = 3 at |beta| 1.2: the complex runs settle slowly, sample 3 slowest
    assert set(res) == {"free", "k0", "k1", "k2"} and all(len(r) == len(X) for r in res.values())
    assert float(res["free"].max()) < 1e-12 and 1e-8 < float(res["k1"].min()) < float(res["k1"][3]) < 1.0
    res = residuals(hep(3), 1.5)  # the complex runs diverge; the real +|beta| run converges
    assert torch.isinf(res["k1"]).all() and torch.isinf(res["k2"]).all() and float(res["k0"].max()) < 1e-12
    with pytest.raises(RuntimeError, match="phase k1"):  # no gate: a divergence fails the phase, as always
        e = ReferenceEngine(MODEL, hep(3), torch.float64)
        e.set_params(PARAMS)
        e.set_batch(X, Y)
        e.run_program(e.program(1.5, T, T))


@pytest.mark.slow
def test_non_converged_samples_are_dropped_from_the_update():
    res = residuals(hep(3), 1.2)
    tol = float((res["k1"][3] + res["k1"][:3].max()) / 2)  # between sample 3 and the others
    e = engine(hep(3), tol)
    out, dropped, fell = e.gated_batch(X, Y, 1.2, T, T, None, tol)
    assert (dropped, fell) == (1, False)
    kept = trained(hep(3), X[:3], Y[:3], 1.2)
    assert gap(e.get_params(), kept) <= 1e-12
    assert gap(e.get_params(), trained(hep(3), X, Y, 1.2)) > 1e-6  # the dropped sample mattered
    e = engine(hep(3), 1.0)  # all converged at a loose tolerance: the plain update, from the first run
    _, dropped, fell = e.gated_batch(X, Y, 1.2, T, T, None, 1.0)
    assert (dropped, fell) == (0, False) and gap(e.get_params(), trained(hep(3), X, Y, 1.2)) <= 1e-12


class OneSidedFallback(HolomorphicEP):
    """Test-only: falls back to one-sided EP at +|beta| (the toy's -|beta| run diverges wherever its complex runs
    do, so N = 2 would drop every sample; this checks that the fallback program's own update is applied)."""
    name = "hep-test-fallback"

    def fallback(self, beta, T1, T2):
        return get_protocol("ep").program(abs(beta), T1, T2)


def test_a_diverging_complex_run_falls_back():
    e = engine(hep(3), 1e-8)
    before = e.get_params()
    _, dropped, fell = e.gated_batch(X, Y, 1.5, T, T, None, 1e-8)  # N = 2's -1.5 run diverges too: all dropped
    assert (dropped, fell) == (len(X), True) and gap(e.get_params(), before) == 0.0
    proto = OneSidedFallback().configured(N=3)
    e = engine(proto, 1e-8)
    _, dropped, fell = e.gated_batch(X, Y, 1.5, T, T, None, 1e-8)
    assert (dropped, fell) == (0, True)
    assert gap(e.get_params(), trained(get_protocol("ep"), X, Y, 1.5)) <= 1e-12
    assert hep(2).fallback(1.5, T, T) is None and get_protocol("hep-osc").fallback(1.5, T, T) is None
    assert [p.beta for p in hep(10).fallback(0.3, T, T)] == [0.0, 0.3, -0.3]


@pytest.mark.slow
def test_the_fabric_gates_as_the_in_process_engine(ray_session):
    res = residuals(hep(3), 1.2)
    tol = float((res["k1"][3] + res["k1"][:3].max()) / 2)
    ref = engine(hep(3), tol)
    want = ref.gated_batch(X, Y, 1.2, T, T, None, tol)
    fab = FabricEngine(MODEL, hep(3), dict(lr=LR, dtype="float64", transport="zmq", timeout_s=20.0,
                                           granularity="neuron", hosts=2, residual_tol=tol))
    try:
        fab.set_params(PARAMS)
        got = fab.gated_batch(X, Y, 1.2, T, T, None, tol)
        assert got[1:] == want[1:] == (1, False)
        assert float((got[0] - want[0]).abs().max()) <= 1e-12
        assert gap(fab.get_params(), ref.get_params()) <= 1e-12
        _, dropped, fell = fab.gated_batch(X, Y, 1.5, T, T, None, 1e-8)  # diverged complex runs on the wire
        assert (dropped, fell) == (len(X), True)
    finally:
        fab.close()


@pytest.mark.slow
def test_the_sweep_counts_non_converged_runs_per_beta_and_fits_without_them(tmp_path):
    cfg = CFG.replace(residual_tol=1e-8)
    res = run_sweep(cfg, str(tmp_path / "s"), ["beta=0.05,0.1,0.2,0.4,1,2", "N=4"])
    by = {p["beta"]: p for p in res["points"]}
    assert [by[b]["diverged"] for b in (0.05, 0.1, 0.2, 0.4, 1, 2)] == [False] * 4 + [True, True]
    assert by[1]["runs_nonconverged"] == 1 and by[1]["rel_l2"] > 0.5  # the -1 run oscillates: finite, not converged
    assert by[2]["runs_nonconverged"] == 3 and by[2]["rel_l2"] is None  # k1, k2, k3 diverged
    (s,) = res["slopes"]
    assert s["converged_max"] == 0.4 and s["points"] == 4 and s["range"] == [0.05, 0.4]
    assert abs(s["slope"] - 4) < 0.5


@pytest.mark.slow
def test_training_counts_dropped_samples_and_fallbacks(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "hep-toy", "--set", "N=3", "--set", "beta=1.5", "--set", "residual_tol=1e-8", "--set",
                "lr=0.01", "--set", "epochs=1", "--set", "batch=64", "--set", "engine=reference", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["hep_fallbacks"] == 4 and m["dropped_samples"] == 256  # 4 batches, every -1.5 run diverges
    assert m["epochs"][0]["hep_fallbacks"] == 4


@pytest.mark.parametrize("value", ["0", "-1e-3", "abc", "true"])
def test_bad_residual_tol_exits_naming_it(value):
    r = run_cli("audit", "hep-toy", "--set", f"residual_tol={value}")
    assert r.returncode == 2 and "residual_tol" in r.stderr


def test_a_protocol_that_updates_inside_its_phases_refuses_the_gate():
    r = run_cli("audit", "gdu-energy-toy", "--set", "protocol=cep", "--set", "residual_tol=1e-6")
    assert r.returncode == 2 and "residual_tol" in r.stderr and "inside its phases" in r.stderr
