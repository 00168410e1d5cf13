"""Hamiltonian echo learning (docs/algorithms.md §10, §13 T3-T5): rhel and heb on leapfrog (phi, pi) models, against BPTT
through the same integrator steps (float64).

Bounds: a quadratic H with the kicks' cotangent at the copies' reference (the unnudged echo, exactly) gives an
estimate affine in eps's odd part: exact for any eps, so only rounding remains, ~ eps_mach ||G|| / eps relative to
||g|| (G = sum of h dH/dtheta over the echo, O(1) here): below 1e-9 for eps >= 1e-4. Non-linear H: O(eps^2)
(two-sided) and O(eps) (one-sided), fitted as slopes.
"""
import re

import numpy as np
import pytest
import torch

from cluster.truth.echo import bptt_grad, bptt_saved_bytes, central_difference, echo_state
from cluster.inprocess import ReferenceEngine
from experiments.config import load_config
from experiments.echo import echo_error
from experiments.sequences import load_sequences
from nodes.models import build as model_of
from nodes.hamiltonian import linhru_toy, logcosh_toy
from protocols import get_protocol
from tests.conftest import run_cli

T3_DLDK12 = -0.2383601  # docs/algorithms.md §13 T3, central differences


def total_rel(est, truth):
    a = torch.cat([(est[k] - truth[k]).flatten() for k in truth])
    return float(a.norm() / torch.cat([truth[k].flatten() for k in truth]).norm())


def estimate(model, params, x, y, T, eps, proto="rhel", engine=None, **settings):
    eng = engine or ReferenceEngine(model, get_protocol(proto).configured(**settings))
    eng.set_params(params)
    eng.set_batch(x, y)
    eng.run_program(eng.program(eps, T, T))
    return eng.estimate()


def setup(name="rhel-two-mass", *sets):
    cfg = load_config(name, list(sets))
    model = model_of(cfg)
    data = load_sequences(cfg)
    return cfg, model, data.x_train[:cfg.batch], data.y_train[:cfg.batch], model.init_params(cfg.seed)


CHAIN = ("model=chain", "sizes=[1,16]", "dataset=teacher", "T=300", "dt=0.1", "batch=3")


@pytest.mark.slow
def test_t3_two_mass_equals_central_differences_and_bptt_for_any_eps():
    cfg, model, x, y, params = setup()
    truth = bptt_grad(model, params, x, y, cfg.T)
    assert abs(float(truth["k12"]) - T3_DLDK12) <= 1e-6 * abs(T3_DLDK12)
    cd = central_difference(model, params, x, y, cfg.T, "k12", (0, 0), 1e-5)
    assert abs(cd - float(truth["k12"])) <= 1e-8  # O(step^2) truncation of the central difference, L quadratic in k
    for eps in (1e-4, 1e-2, 1.0):
        est = estimate(model, params, x, y, cfg.T, eps)
        assert abs(float(est["k12"]) - T3_DLDK12) <= 1e-6 * abs(T3_DLDK12)
        assert total_rel(est, truth) <= 1e-9, eps


@pytest.mark.slow
def test_t3_config_audit_cli():
    r = run_cli("audit", "rhel-two-mass", "--set", "engine=reference", "--out", "/tmp/rhel-t3-cli", timeout=240)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]  # the audit's headline: T3's figure, and the two checks beside it
    found = re.fullmatch(r"dL/dk12 = (\S+) \(BPTT (\S+), central differences (\S+)\)", last)
    assert found, r.stdout
    assert all(abs(float(v) - T3_DLDK12) <= 1e-6 * abs(T3_DLDK12) for v in found.groups()), last
    import json
    rep = json.load(open("/tmp/rhel-t3-cli/audit.json"))
    from tests.conftest import assert_png
    assert_png("/tmp/rhel-t3-cli/estimate_vs_bptt.png", 300, 300)
    bundle = np.load("/tmp/rhel-t3-cli/audit.npz")
    assert abs(float(bundle["estimate/k12"][0, 0]) - T3_DLDK12) <= 1e-6 * abs(T3_DLDK12)
    assert bundle["x"].shape == (1, 3000, 1) and bundle["y"].shape == (1, 3000, 1)
    assert rep["echo_error"] <= 1e-12 and rep["per_tensor"]["k12"]["rel_l2"] <= 1e-9
    r = run_cli("audit", "--set", "replay=/tmp/rhel-t3-cli/audit.npz", "--set", "eps=1", "--set", "engine=reference",
                "--out", "/tmp/rhel-t3-replay", timeout=240)  # the bundle's batch and parameters, another eps
    assert r.returncode == 0, r.stderr
    again = np.load("/tmp/rhel-t3-replay/audit.npz")
    assert json.loads(str(again["meta"]))["eps"] == 1 and again["x"].shape == (1, 3000, 1)
    assert abs(float(again["estimate/k12"][0, 0]) - T3_DLDK12) <= 1e-6 * abs(T3_DLDK12)


def test_a_scalar_parameter_audit_ends_with_its_derivative(tmp_path):
    """The two-mass audit (T3's system, 100 steps, in-process) ends with dL/dk12 by the estimate, BPTT and central
    differences: audit.json's `derivatives`, the frozen k1, k2, g left out."""
    import json
    out = tmp_path / "a"
    r = run_cli("audit", "rhel-two-mass", "--set", "engine=reference", "--set", "T=100", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-2].startswith("audit: cosine 1.000000, rel. L2 ") and lines[-2].endswith(" vs BPTT (4 tensors)")
    d = json.loads((out / "audit.json").read_text())["derivatives"]
    k12 = d["k12"]
    assert set(d) == {"k12"} and abs(k12["central_differences"] - k12["bptt"]) <= 1e-6 * abs(k12["bptt"])
    assert lines[-1] == (f"dL/dk12 = {k12['estimate']:.7g} (BPTT {k12['bptt']:.7g}, central differences "
                         f"{k12['central_differences']:.7g})")
    assert float(np.load(out / "audit.npz")["estimate/k12"][0, 0]) == k12["estimate"]


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["rhel", "heb"])
def test_chain_equals_bptt_for_any_eps(proto):
    cfg, model, x, y, params = setup("rhel-two-mass", *CHAIN)
    truth = bptt_grad(model, params, x, y, cfg.T, terminal=proto == "heb")
    for eps in (1e-4, 1e-2, 1.0):
        assert total_rel(estimate(model, params, x, y, cfg.T, eps, proto), truth) <= 1e-9, eps


@pytest.mark.slow
@pytest.mark.parametrize("name,sets", [("two-mass", ()), ("chain", CHAIN[:2] + ("dataset=teacher", "dt=0.1")),
                                       ("logcosh", None)])
def test_the_unnudged_echo_returns_to_the_start_after_1000_steps(name, sets):
    """Through the nodes' own step function (the engine's forward and echo phases), and the central leapfrog."""
    if sets is None:
        model = logcosh_toy(0.02)
        x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1000, 4)))
        params, y = model.init_params(0), None
    else:
        cfg, model, x, y, params = setup("rhel-two-mass", *sets, "T=1000", "batch=2")
    eng = ReferenceEngine(model, get_protocol("rhel"))
    eng.set_params(params)
    eng.set_batch(x, y)
    s0, back = echo_state(model, params, x, 1000)
    assert float((back - s0).abs().max()) <= 1e-10
    assert echo_error(eng, 1000, s0) <= 1e-10


def _t4(h, eps, sided="two", nudge="own", integrator="leapfrog"):
    model = logcosh_toy(h, integrator)
    params = model.init_params(0)
    u = torch.from_numpy(np.random.default_rng(0).standard_normal((400, 4)))[None]
    truth = bptt_grad(model, params, u, None, 400)["w"]
    est = estimate(model, params, u, None, 400, eps, sided=sided, nudge=nudge)["w"]
    return float((est - truth).norm() / truth.norm())


def slope(eps, err):
    return float(np.polyfit(np.log(eps), np.log(err), 1)[0])


@pytest.mark.slow
@pytest.mark.parametrize("h", [0.1, 0.02, 0.005])
def test_t4_error_orders(h):
    """§13 T4 with each echo nudged from its own state (the nudged Hamiltonian H + eps l): slope 2 two-sided, 1
    one-sided, <= 1e-7 at eps = 1e-6; the reference-state cotangent is at least as accurate."""
    eps = [1e-2, 1e-3, 1e-4, 1e-5]
    two = [_t4(h, e) for e in eps]
    assert abs(slope(eps, two) - 2) <= 0.2, two
    assert _t4(h, 1e-6) <= 1e-7
    one = [_t4(h, e, "one") for e in eps]
    assert abs(slope(eps, one) - 1) <= 0.2, one
    ref = [_t4(h, e, nudge="reference") for e in eps[:2]]
    assert all(r <= o for r, o in zip(ref, two)), (ref, two)


@pytest.mark.slow
def test_t4_force_at_the_start_of_step_fails_the_exactness_check():
    """The public NonlinHRU's leapfrog (force at y, dH/dtheta at y_half): O(h), not exact (§10.3)."""
    assert _t4(0.02, 1e-6) <= 1e-8
    assert _t4(0.02, 1e-6, integrator="start-force") >= 1e-2


@pytest.mark.parametrize("h,A,B", [(0.5, 3.8e-2, 5.7e-2), (0.1, 1.3e-3, 3.1e-2)])
def test_t5_full_step_collection_fails_half_step_is_exact(h, A, B):
    """§13 T5: collecting dH/dtheta at full-step echo states (the public LinHRU) gives the table's errors; half-steps
    are exact."""
    errs = {}
    for collect in ("full", "half"):
        model, u = linhru_toy(h, collect)
        params = model.init_params(0)
        truth = bptt_grad(model, params, u[None], None, 300)
        est = estimate(model, params, u[None], None, 300, 1e-5)
        errs[collect] = {k: float((est[k] - truth[k]).norm() / truth[k].norm()) for k in ("A", "B")}
    assert errs["half"]["A"] <= 1e-7 and errs["half"]["B"] <= 1e-7
    assert abs(errs["full"]["A"] / A - 1) <= 0.1 and abs(errs["full"]["B"] / B - 1) <= 0.1, errs["full"]


def test_hru_logcosh_readout_cosine_and_norm_ratio():
    """A non-linear HRU layer with a ce-mean readout (layer node): at eps = 1e-4 every parameter's cosine >= 0.9999
    and norm ratio in [0.999, 1.001]; the linear HRU is exact (at eps = 1e-4 its rounding, eps_mach ||G|| / eps,
    is ~3e-9 of a classification gradient's small norm)."""
    for model_name, bound in (("hru-logcosh", None), ("hru-linear", 1e-9)):
        cfg, model, x, y, params = setup("rhel-two-mass", f"model={model_name}", "sizes=[3,8,4]",
                                         "dataset=synthetic-motion", "T=60", "dt=0.5", "batch=6",
                                         "granularity=layer")
        truth = bptt_grad(model, params, x, y, cfg.T)
        est = estimate(model, params, x, y, cfg.T, 1e-4)
        for k in truth:
            if float(truth[k].norm()) == 0:
                continue
            a, b = est[k].flatten(), truth[k].flatten()
            assert float(a @ b / (a.norm() * b.norm())) >= 0.9999, k
            assert 0.999 <= float(a.norm() / b.norm()) <= 1.001, k
        if bound:  # quadratic H, the readout's fixed cotangent: exact for any eps (at eps = 1 rounding is smallest)
            assert total_rel(estimate(model, params, x, y, cfg.T, 1.0), truth) <= bound


@pytest.mark.slow
def test_what_a_node_keeps_does_not_grow_with_T_while_bptt_does():
    kept = {}
    for T in (100, 1000):  # ten times the steps: the same bytes kept
        _, model, x, y, params = setup("rhel-two-mass", "dataset=teacher", f"T={T}")
        eng = ReferenceEngine(model, get_protocol("rhel"))
        estimate(model, params, x, y, T, 1e-2, engine=eng)
        kept[T] = eng.kept_bytes()
    assert kept[100] == kept[1000] and all(v > 0 for v in kept[100].values())
    short = bptt_saved_bytes(model, params, x[:, :100], y[:, :100], 100)
    long = bptt_saved_bytes(model, params, x[:, :1000], y[:, :1000], 1000)
    assert long >= 9 * short


def test_the_echo_runs_the_forward_step_function(monkeypatch):
    from nodes.leapfrog import LeapfrogRule
    calls = []
    leap = LeapfrogRule.leap

    def counted(self, *a, **k):
        calls.append(self.id)
        return leap(self, *a, **k)
    monkeypatch.setattr(LeapfrogRule, "leap", counted)
    cfg, model, x, y, params = setup("rhel-two-mass", "T=50")
    estimate(model, params, x, y, 50, 1e-2)
    assert len(calls) == 2 * 2 * 50  # two nodes, forward and echo, 50 steps each


def test_bad_input_is_named(tmp_path):
    for sets, field in ((["integrator=euler"], "integrator"), (["damping=0.1"], "damping"), (["eps=0"], "eps"),
                        (["protocol=ep"], "protocol"), (["sizes=[1,3]"], "sizes"), (["sided=three"], "sided"),
                        (["dataset=digits"], "dataset")):
        r = run_cli("audit", "rhel-two-mass", *sum((["--set", s] for s in sets), []), "--out",
                    str(tmp_path / field), timeout=120)
        assert r.returncode == 2 and f"{field}:" in r.stderr, (sets, r.stderr)
        assert not (tmp_path / field).exists()
    cfg, model, x, y, params = setup("rhel-two-mass", "T=50")
    eng = ReferenceEngine(model, get_protocol("rhel"))
    eng.set_params(params)
    eng.set_batch(torch.zeros(1, 40, 1, dtype=torch.float64), y)
    with pytest.raises(ValueError, match="x: node m1, phase forward: expected a sequence"):
        eng.run_program(eng.program(1e-2, 50, 50))
    eng.set_batch(x, y[:, :40])
    with pytest.raises(ValueError, match="y: node m2, phase forward"):
        eng.run_program(eng.program(1e-2, 50, 50))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_neuron_fabric_equals_in_process_and_bptt(ray_session):
    """The 16-mass chain on a neuron fabric over ZeroMQ (4 host actors): trajectories equal the in-process engine's,
    estimates equal BPTT for eps in {1e-4, 1e-2, 1}, no locality violation, two phase calls per node."""
    from cluster.runtime.coordinator import FabricEngine
    from cluster.locality import locality_report
    cfg, model, x, y, params = setup("rhel-two-mass", *CHAIN[:3], "dt=0.1", "T=250", "batch=2")
    truth = bptt_grad(model, params, x, y, cfg.T)
    ref = ReferenceEngine(model, get_protocol("rhel"))
    fab = FabricEngine(model, get_protocol("rhel"), dict(granularity="neuron", hosts=4, lr=[0.1], dtype="float64",
                                                          timeout_s=30))
    try:
        for eng in (ref, fab):
            eng.set_params(params)
            eng.set_batch(x, y)
        prog = ref.program(1e-2, cfg.T, cfg.T)
        states = {}
        for name, eng in (("ref", ref), ("fab", fab)):
            eng.begin()
            states[name] = [eng.run_phase(ph, record_states=True)["states"] for ph in prog]
        for a, b in zip(states["ref"], states["fab"]):
            for u, v in zip(a, b):
                assert float((u - v).abs().max()) <= 1e-12
        assert total_rel(fab.estimate(), truth) <= 1e-9
        for eps in (1e-4, 1.0):
            assert total_rel(estimate(model, params, x, y, cfg.T, eps, engine=fab), truth) <= 1e-9
        rep = locality_report(fab.specs, fab.message_logs(), get_protocol("rhel"))
        assert rep["violations"] == [] and rep["boundary"] == {"x": ["chain.0"], "y": ["end"]}
        assert set(rep["per_edge"]["chain.3->chain.4"]) == {"a"}
        assert rep["controls"]["forward"] == rep["controls"]["echo"] == 3 * 16
    finally:
        fab.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("masses,hosts", [(2, 0), (64, 4)])
def test_two_phase_calls_whatever_the_size(ray_session, masses, hosts):
    from cluster.runtime.coordinator import FabricEngine
    from cluster.locality import locality_report
    sets = ("rhel-two-mass", "T=10") if masses == 2 else ("rhel-two-mass", "model=chain", f"sizes=[1,{masses}]",
                                                          "dataset=teacher", "T=10", "dt=0.1", "batch=1")
    cfg, model, x, y, params = setup(*sets)
    for sided in ("two", "one"):
        fab = FabricEngine(model, get_protocol("rhel").configured(sided=sided),
                           dict(granularity="neuron", hosts=hosts, lr=[0.1], dtype="float64", timeout_s=30))
        try:
            estimate(model, params, x, y, cfg.T, 1e-2, engine=fab)
            rep = locality_report(fab.specs, fab.message_logs(), fab.protocol)
            phases = {k: v / masses for k, v in rep["controls"].items() if k in ("forward", "echo", "flip")}
            assert phases == {"forward": 1, "echo": 1} and rep["violations"] == []
        finally:
            fab.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fabric,eps_list", [(dict(granularity="neuron"), (1e-4, 1.0)),
                                             (dict(granularity="layer", hosts=1), (1e-2,))])
def test_t3_on_the_fabric(ray_session, fabric, eps_list):
    """§13 T3 on a neuron fabric (a node per mass, an actor each) and a hosted layer fabric: the trajectories equal the
    in-process engine's to 1e-12, the estimate equals BPTT to 1e-9 at the smallest and the largest eps of
    test_t3_two_mass_equals_central_differences_and_bptt_for_any_eps (and at the middle one on the layer fabric)."""
    from cluster.runtime.coordinator import FabricEngine
    cfg, model, x, y, params = setup()
    truth = bptt_grad(model, params, x, y, cfg.T)
    ref = ReferenceEngine(model, get_protocol("rhel"))
    fab = FabricEngine(model, get_protocol("rhel"), dict(fabric, lr=[0.1], dtype="float64", timeout_s=30))
    try:
        for eng in (ref, fab):
            eng.set_params(params)
            eng.set_batch(x, y)
        prog = ref.program(eps_list[0], cfg.T, cfg.T)
        rec = []
        for eng in (ref, fab):
            eng.begin()
            rec.append([torch.cat(eng.run_phase(ph, record_states=True)["states"], -1) for ph in prog])
        assert all(float((a - b).abs().max()) <= 1e-12 for a, b in zip(*rec))
        assert total_rel(fab.estimate(), truth) <= 1e-9
        for eps in eps_list[1:]:
            assert total_rel(estimate(model, params, x, y, cfg.T, eps, engine=fab), truth) <= 1e-9, eps
    finally:
        fab.close()


def test_stacked_layers_pipelined_equal_bptt():
    """Two HRU layers, the upper driven by the lower's half-step positions: in the one echo, the upper layer sends
    the lower the shares of its input gradient (kind g) and the lower kicks its copies with their contrast inside
    the step it belongs to. Linear layers: exact (eps = 1: rounding only); log-cosh layers: O(eps^2)."""
    cfg, model, x, y, params = setup("rhel-two-mass", "model=hru-stack-linear", "sizes=[3,6,5,4]",
                                     "dataset=synthetic-motion", "T=60", "dt=0.5", "batch=5", "granularity=layer")
    truth = bptt_grad(model, params, x, y, cfg.T)
    assert float(truth["B1"].norm()) > 1e-3  # the lower layer's gradient is no rounding residue
    assert total_rel(estimate(model, params, x, y, cfg.T, 1.0), truth) <= 1e-9
    cfg, model, x, y, params = setup("rhel-two-mass", "model=hru-stack-logcosh", "sizes=[3,6,5,4]",
                                     "dataset=synthetic-motion", "T=60", "dt=0.5", "batch=5", "granularity=layer")
    truth = bptt_grad(model, params, x, y, cfg.T)
    errs = [total_rel(estimate(model, params, x, y, cfg.T, eps), truth) for eps in (1e-2, 1e-3)]
    assert 70 <= errs[0] / errs[1] <= 130, errs  # slope 2: a decade in eps, two in the error


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stack_on_a_layer_fabric(ray_session):
    from cluster.runtime.coordinator import FabricEngine
    from cluster.locality import locality_report
    cfg, model, x, y, params = setup("rhel-two-mass", "model=hru-stack-linear", "sizes=[3,6,5,4]",
                                     "dataset=synthetic-motion", "T=40", "dt=0.5", "batch=4", "granularity=layer")
    ref = estimate(model, params, x, y, cfg.T, 0.5)
    fab = FabricEngine(model, get_protocol("rhel"), dict(granularity="layer", lr=[0.1], dtype="float64", timeout_s=30))
    try:
        got = estimate(model, params, x, y, cfg.T, 0.5, engine=fab)
        assert all(float((got[k] - ref[k]).abs().max()) <= 1e-12 for k in ref)
        rep = locality_report(fab.specs, fab.message_logs(), fab.protocol)
        assert rep["violations"] == [] and rep["per_edge"] == {"h1->h2": {"a": 82}, "h2->h1": {"g": 41}}
        assert rep["controls"]["forward"] == rep["controls"]["echo"] == 2
    finally:
        fab.close()


@pytest.mark.slow
def test_python_api_takes_a_hamiltonian_model(tmp_path):
    from experiments.api import Simulator
    from nodes.hamiltonian import chain
    sim = Simulator(chain(16, dt=0.1), protocol="rhel", config="chain", engine="reference", T=250, batch=2, eps=1e-2)
    rep = sim.audit(out=str(tmp_path / "a"))
    assert rep["total"]["rel_l2"] <= 1e-9 and rep["echo_error"] <= 1e-12
    assert rep["phase_calls"] is None  # in-process: no coordinator log to count them from
