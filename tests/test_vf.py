"""`vf` and `cvf` on `prototypical-asym` (docs/algorithms.md §1 "Asymmetric layered networks", §6): the model with
B = W^T is `prototypical`; both rules approach BPTT as O(beta); cvf parts from vf by O(beta); flipped feedback turns
the hidden layer's update away from BPTT; both engines compute the same; bad settings are refused by name."""
import math

import numpy as np
import pytest
import torch

from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import FabricEngine, lrs_by_param
from cluster.inprocess import ReferenceEngine
from cluster.launch import model_from, protocol_from
from experiments.config import ConfigError, load_config
from nodes.layered import layered, layered_asym
from tests.conftest import batch, rel, scaled_params

ASYM = layered_asym((4, 5, 3), "sigmoid")
EPS = torch.finfo(torch.float64).eps


def estimate(protocol, beta, model=ASYM, T1=60, T2=40, lr=0.0, where=None):
    lrs = [lr] * (len(model.sizes) - 1)
    if where is None:
        e = ReferenceEngine(model, protocol, torch.float64, lrs_by_param(model, lrs))
    else:
        e = FabricEngine(model, protocol, dict(lr=lrs, dtype="float64", transport="zmq", timeout_s=20.0, **where))
    try:
        e.set_params(scaled_params(model))
        e.set_batch(*batch(model))
        e.run_program(e.program(beta, T1, T2))
        return e.estimate(), e.get_params()
    finally:
        e.close()


def angle(a, b) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, float((a * b).sum() / (a.norm() * b.norm()))))))


def test_feedback_started_as_the_transpose_is_the_symmetric_net():
    sym = layered("prototypical", (4, 5, 3), "sigmoid")
    p_sym, p_asym = scaled_params(sym), scaled_params(ASYM)
    assert torch.equal(p_asym["B1"], p_sym["W1"].T) and all(torch.equal(p_asym[k], v) for k, v in p_sym.items())
    x, y = batch(sym)
    states = []
    for m, p in ((sym, p_sym), (ASYM, p_asym)):
        e = ReferenceEngine(m, "ep", torch.float64)
        e.set_params(p)
        e.set_batch(x, y)
        states.append(e.run_phase(e.program(0.1, 40, 1)[0], record_states=True)["states"])
    for a, b in zip(*states, strict=True):  # the same products, B s = (W^T) s: rounding only, per step
        assert rel(b, a) <= 40 * EPS


@pytest.mark.parametrize("protocol", ["vf", "cvf"])
def test_vf_and_cvf_approach_bptt_as_beta(protocol):
    x, y = batch(ASYM)
    truth = bptt_grad(ASYM, scaled_params(ASYM), x, y, 60)
    err = {}
    for beta in (1e-2, 1e-3):
        g = estimate(protocol, beta)[0]
        err[beta] = {k: rel(g[k], truth[k]) for k in truth}
    for k in truth:  # forward and feedback weights alike: with B = W^T the rule's fixed point is EP's
        assert err[1e-3][k] <= 1e-3 and 5 <= err[1e-2][k] / err[1e-3][k] <= 20, (k, err[1e-2][k], err[1e-3][k])


def test_cvf_parts_from_vf_by_order_beta():
    gap = {}
    for beta in (1e-2, 1e-3, 1e-4):
        gv, gc = estimate("vf", beta)[0], estimate("cvf", beta)[0]
        gap[beta] = {k: rel(gc[k], gv[k]) for k in gv}
    for k in ("W1", "B1"):  # pre-synaptic signals that move during the nudged phase
        slopes = [math.log10(gap[b][k] / gap[b / 10][k]) for b in (1e-2, 1e-3)]
        assert all(0.9 <= s <= 1.1 for s in slopes), (k, slopes)
    for k in ("W0", "b0", "b1"):  # the input (or 1) does not move: the per-step sum telescopes exactly
        assert gap[1e-3][k] <= 16 * EPS, (k, gap[1e-3][k])


def test_flipped_feedback_turns_the_hidden_update_away_from_bptt():
    x, y = batch(ASYM)
    for psi, hidden in ((0.0, (0.0, 1.0)), (180.0, (90.0, 180.0))):
        m = layered_asym((4, 5, 3), "sigmoid", angle=psi)
        truth = bptt_grad(m, scaled_params(m), x, y, 60)
        g = estimate("cvf", 1e-3, model=m)[0]
        assert hidden[0] <= angle(g["W0"], truth["W0"]) <= hidden[1] + 1e-6, psi
        assert angle(g["W1"], truth["W1"]) < 10.0, psi  # the output layer's own error does not pass through B


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["vf", "cvf"])
@pytest.mark.parametrize("where", [dict(granularity="layer"), dict(granularity="neuron", hosts=2)],
                         ids=["layer", "neuron-hosts2"])
def test_both_engines_compute_the_same(protocol, where, ray_session):
    lr = 0.2
    (g_ref, p_ref), (g_fab, p_fab) = (estimate(protocol, 0.1, T1=20, T2=8, lr=lr, where=w) for w in (None, where))
    before = scaled_params(ASYM)
    for k in g_ref:
        assert rel(g_fab[k], g_ref[k]) <= 1e-12 and rel(p_fab[k], p_ref[k]) <= 1e-12, k
        if protocol == "cvf":  # the weights moved inside the phase by exactly -lr times the summed per-step gradients
            torch.testing.assert_close(p_ref[k] - before[k], -lr * g_ref[k], rtol=1e-10, atol=1e-15)
        else:  # vf updates once, at the end of the batch: nothing moved yet
            assert torch.equal(p_ref[k], before[k])


@pytest.mark.parametrize("sets, field", [
    (["protocol=cvf", "model=prototypical"], "model"), (["protocol=cep", "model=prototypical-asym"], "model"),
    (["protocol=cvf", "model=prototypical-asym", "angle=200"], "angle"),
    (["protocol=cvf", "model=prototypical-asym", "feedback_init=mirror"], "feedback_init"),
    (["protocol=cvf", "model=prototypical-asym", "optimizer=adam"], "optimizer"),
    (["protocol=vf", "model=prototypical-asym", "beta=0"], "beta")])
def test_bad_vf_settings_are_refused_by_name(sets, field):
    with pytest.raises(ConfigError) as err:
        load_config("train", ["optimizer=sgd", *sets])
    assert err.value.field == field, str(err.value)


def test_config_keys_reach_the_model_and_the_protocol():
    cfg = load_config("train", ["protocol=vf", "model=prototypical-asym", "feedback_init=independent",
                                "angle=90", "random_sign=true"])
    m = model_from(cfg)
    p = m.init_params(cfg.seed)
    assert m.name == "prototypical-asym" and not torch.allclose(p["B1"].abs(), p["W1"].T.abs())
    signs = {np.sign(protocol_from(cfg).batch_beta(0.1, np.random.default_rng(s))) for s in range(20)}
    assert signs == {-1.0, 1.0}
    flipped = model_from(load_config("train", ["model=prototypical-asym", "angle=180"])).init_params(0)
    straight = model_from(load_config("train", ["model=prototypical-asym"])).init_params(0)
    assert torch.equal(flipped["B1"], -straight["B1"]) and torch.equal(straight["B1"], straight["W1"].T)


def test_vf_and_cvf_are_the_pinned_pairings_of_a_post_change_with_a_pre_signal():
    beta, B = 0.05, 6
    x, y = batch(ASYM, B=B)
    got, states = {}, None
    for protocol in ("vf", "cvf"):
        e = ReferenceEngine(ASYM, protocol, torch.float64)
        e.set_params(scaled_params(ASYM))
        e.set_batch(x, y)
        e.begin()
        states = {ph.name: e.run_phase(ph, record_states=True)["states"] for ph in e.program(beta, 30, 12)}
        got[protocol] = e.estimate()
    free, nudged = [s[-1] for s in states["free"]], states["nudged"]  # per layer 1, 2: (steps + 1, B, d)

    def pair(post, pre):  # -(post change)^T pre / (B beta), batch mean
        return -post.T @ pre / (B * beta)
    s1, s2 = nudged
    vf = {"W0": pair(s1[-1] - free[0], x), "b0": -(s1[-1] - free[0]).sum(0) / (B * beta),
          "W1": pair(s2[-1] - free[1], free[0]), "b1": -(s2[-1] - free[1]).sum(0) / (B * beta),
          "B1": pair(s1[-1] - free[0], free[1])}
    steps = range(len(s1) - 1)
    cvf = {"W0": sum(pair(s1[t + 1] - s1[t], x) for t in steps),
           "b0": sum(-(s1[t + 1] - s1[t]).sum(0) / (B * beta) for t in steps),
           "W1": sum(pair(s2[t + 1] - s2[t], s1[t]) for t in steps),
           "b1": sum(-(s2[t + 1] - s2[t]).sum(0) / (B * beta) for t in steps),
           "B1": sum(pair(s1[t + 1] - s1[t], s2[t]) for t in steps)}
    for name, want in (("vf", vf), ("cvf", cvf)):
        for k, v in want.items():  # the same products in another order: rounding of a difference over beta
            assert float((got[name][k] - v).abs().max()) <= 12 * 8 * EPS / beta, (name, k)


@pytest.mark.slow
def test_the_audit_reports_layer_angles_for_every_feedback_angle(tmp_path):
    from experiments.api import Simulator
    seen = {}
    for psi in (0, 45, 90, 135, 180):
        report = Simulator(layered_asym((4, 5, 3), "sigmoid", angle=psi), protocol="cvf", sizes=[4, 5, 3],
                           dataset="random", init_scale=2.0, beta=1e-3, T1=60, T2=40, engine="reference",
                           optimizer="sgd", lr=0.0).audit(out=str(tmp_path / f"psi{psi}"))
        seen[psi] = report["angles"]
        assert set(report["angles"]["layers"]) == {"0", "1"} and set(report["angles"]["feedback"]) == {"B1"}
    assert seen[0]["total"] < 1.0 and seen[0]["feedback"]["B1"] < 1.0
    assert seen[180]["layers"]["0"] > 90.0 and seen[180]["layers"]["1"] < 10.0
