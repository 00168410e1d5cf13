"""The `vector-field` model (docs/algorithms.md §1: dx/dt = -x + W rho(x_prev) + b + B rho(x_next), Euler dt) and the
implicit-differentiation truth at the free fixed point (cluster/truth/implicit.py, §9): implicit equals BPTT where the free
phase has settled, `vf` on the model is exactly the pinned VF formula, and VF's bias does not vanish with beta."""
import pytest
import torch

from cluster.audit import compare
from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import FabricEngine
from cluster.truth.implicit import implicit_grad
from cluster.inprocess import ReferenceEngine, relax
from nodes.layered import layered, layered_asym
from tests.conftest import estimate_once, run_cli
from tests.test_hep import gap

MODEL = layered_asym((4, 5, 3), "tanh", True, 0.2, "vector-field")
PARAMS = MODEL.init_params(0, torch.float64, 1.0)
gen = torch.Generator().manual_seed(3)
X = torch.rand(6, 4, dtype=torch.float64, generator=gen)
Y = torch.rand(6, 3, dtype=torch.float64, generator=gen)
T = 400


def rel(a, b):
    return compare(a, b)["total"]["rel_l2"]


def test_implicit_differentiation_is_bptt_once_the_free_phase_has_settled():
    for model, params in ((MODEL, PARAMS), (layered("energy", (4, 5, 3), "sigmoid", 0.5), None)):
        params = params or model.init_params(1, torch.float64, 1.0)
        g, diag = implicit_grad(model, params, X, Y, T)
        assert diag["residual"] <= 1e-14 and diag["radius"] < 1
        assert rel(g, bptt_grad(model, params, X, Y, T)) <= 1e-12
    g, diag = implicit_grad(MODEL, PARAMS, X, Y, 20)  # 20 steps: not settled, and the gap says so
    assert diag["residual"] > 1e-4 and rel(g, bptt_grad(MODEL, PARAMS, X, Y, 20)) > 1e-3


def vf(beta, engine=None):
    return estimate_once(engine or ReferenceEngine(MODEL, "vf", torch.float64), PARAMS, X, Y, beta, T, T)


def vf_formula(beta):
    """The pinned rule in plain torch: g_W{n} = -(x^b_{n+1} - x0_{n+1}) rho(x0_n)^T / beta (batch mean),
    g_b{n} = -(x^b_{n+1} - x0_{n+1}) / beta, g_B{n} = -(x^b_n - x0_n) rho(x0_{n+1})^T / beta; rho(x0_0) = x."""
    x0 = relax(MODEL, PARAMS, X, T)
    xb = relax(MODEL, PARAMS, X, T, s=x0, beta=beta, y=Y)
    a0 = [X] + [torch.tanh(v) for v in x0]
    d = [(b - a) / beta for a, b in zip(x0, xb)]
    B = X.shape[0]
    return {"W0": -d[0].T @ a0[0] / B, "b0": -d[0].mean(0), "W1": -d[1].T @ a0[1] / B, "b1": -d[1].mean(0),
            "B1": -d[0].T @ a0[2] / B}


def test_vf_on_the_vector_field_is_the_pinned_formula_and_stays_biased():
    truth, _ = implicit_grad(MODEL, PARAMS, X, Y, T)
    errs = []
    for beta in (1e-2, 1e-3, 1e-4):
        est = vf(beta)
        assert gap(est, vf_formula(beta)) <= 1e-12
        errs.append(rel(est, truth))
    # B = W^T at init, but rho' varies, so the field is not a gradient: the bias is a plateau, not O(beta)
    assert errs[2] > 1e-2 and abs(errs[1] - errs[2]) < 0.05 * errs[2], errs


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(granularity="layer"), dict(granularity="neuron", hosts=2)],
                         ids=["layer", "neuron-hosts2"])
def test_fabrics_run_the_vector_field_as_the_in_process_engine(where, ray_session):
    fab = FabricEngine(MODEL, "vf", dict(lr=[0.0] * 2, dtype="float64", transport="zmq", timeout_s=20.0, **where))
    assert gap(vf(1e-2, fab), vf(1e-2)) <= 1e-12


def test_the_audit_reports_implicit_differentiation(tmp_path):
    r = run_cli("audit", "audit", "--set", "model=vector-field", "--set", "protocol=vf", "--set", "activation=tanh",
                "--set", "sizes=[6,5,3]", "--set", "dataset=random", "--set", "dt=0.2", "--set", "T1=400",
                "--set", "T2=400", "--set", "engine=reference", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    rep = json.loads((tmp_path / "a" / "audit.json").read_text())
    imp = rep["implicit"]
    assert imp["converged"] and imp["bptt_gap"] <= 1e-8 and imp["radius"] < 1
    assert abs(imp["estimate"]["cosine"] - rep["total"]["cosine"]) < 1e-6  # the two truths agree
    import numpy as np
    with np.load(tmp_path / "a" / "audit.npz") as z:
        assert {"implicit/W0", "implicit/B1"} <= set(z.files)


def test_a_protocol_that_does_not_run_on_the_vector_field_exits_naming_the_model():
    r = run_cli("audit", "audit", "--set", "model=vector-field", "--set", "protocol=cvf", "--set", "activation=tanh")
    assert r.returncode == 2 and "model" in r.stderr


def test_one_step_is_the_pinned_euler_step():
    """x_n <- x_n + dt (-x_n + W_{n-1} rho(x_{n-1}) + b_{n-1} + B_n rho(x_{n+1})), rho(x_0) = x; the output is nudged by
    -beta (x_N - y). Written out in plain torch (B{n} maps layer n+1 to n)."""
    s = [torch.randn(6, 5, dtype=torch.float64, generator=gen), torch.randn(6, 3, dtype=torch.float64, generator=gen)]
    p, dt, beta = PARAMS, 0.2, 0.3
    h1 = X @ p["W0"].T + p["b0"] + torch.tanh(s[1]) @ p["B1"].T
    h2 = torch.tanh(s[0]) @ p["W1"].T + p["b1"]
    want = [s[0] + dt * (h1 - s[0]), s[1] + dt * (h2 - s[1] - beta * (s[1] - Y))]
    got = relax(MODEL, PARAMS, X, 1, s=s, beta=beta, y=Y)
    assert max(float((a - b).abs().max()) for a, b in zip(got, want)) <= 1e-15
