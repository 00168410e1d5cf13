"""`cep` (continual EP, docs/algorithms.md §6): at lr = 0 it is `ep`; with lr > 0 every engine follows an independent
implementation of the pinned per-step update, in the pinned order; bad settings are refused by name."""
import pytest
import torch

from cluster.runtime.coordinator import FabricEngine, lrs_by_param
from cluster.inprocess import ReferenceEngine
from experiments.config import ConfigError, load_config
from nodes.activations import ACTIVATIONS
from nodes.layered import layered
from protocols.base import Phase
from tests.conftest import batch, rel, scaled_params

NET = layered("prototypical", (4, 5, 3), "sigmoid")
EPS = torch.finfo(torch.float64).eps
WHERE = {"reference": None, "layer": dict(granularity="layer"), "neuron": dict(granularity="neuron"),
         "neuron-hosts2": dict(granularity="neuron", hosts=2)}


def engine(protocol, where, lr, model=NET):
    lrs = [lr] * (len(model.sizes) - 1)
    if where is None:
        e = ReferenceEngine(model, protocol, torch.float64, lrs_by_param(model, lrs))
    else:
        e = FabricEngine(model, protocol, dict(lr=lrs, dtype="float64", transport="zmq", timeout_s=20.0, **where))
    e.set_params(scaled_params(model))
    e.set_batch(*batch(model))
    return e


def run(e, beta, T1, T2):
    """The program, phase by phase, with every step's state recorded."""
    e.begin()
    return {ph.name: e.run_phase(ph, record_states=True)["states"] for ph in e.program(beta, T1, T2)}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
def test_cep_at_lr_zero_is_ep(where, ray_session):
    beta, T1, T2 = 1e-2, 30, 10
    out = {}
    for name in ("ep", "cep"):
        e = engine(name, WHERE[where], 0.0)
        try:
            out[name] = run(e, beta, T1, T2), e.estimate(), e.get_params()
        finally:
            e.close()
    (s_ep, g_ep, p_ep), (s_cep, g_cep, p_cep) = out["ep"], out["cep"]
    for ph in ("free", "nudged"):  # every step of every layer, bitwise (cep's hooks run; nothing changes at lr 0)
        assert all(torch.equal(a, b) for a, b in zip(s_ep[ph], s_cep[ph], strict=True)), ph
    for k in p_ep:
        assert torch.equal(p_ep[k], p_cep[k]), k
        # cep sums T2 differences of G's, each rounded to a few eps |G|, then divides by beta; ep takes one
        # difference. Every entry of G is a batch mean of products of values in [0, 1], so |G| <= 1, and the two
        # part by at most about T2 eps |G| / beta; the factor 4 allows the roundings of the mean, difference, sum
        bound = T2 * EPS * 4.0 / beta
        assert float((g_cep[k] - g_ep[k]).abs().max()) <= min(bound, 1e-12), k


def independent_cep(params, x, y, beta, T1, T2, lr, rho):
    """C-EP on `prototypical` from docs/algorithms.md §1 and §6, in plain torch: s_n <- rho(W_{n-1} s_{n-1} + b_{n-1} +
    W_n^T s_{n+1}) (output: - beta (s_N - y) inside rho), all layers from the old state; then, in the nudged phase,
    after each transition t -> t+1: W_n += (lr/beta)(s_{n+1}^{t+1} s_n^{t+1 T} - s_{n+1}^t s_n^{t T}) / B,
    b_n += (lr/beta)(s_{n+1}^{t+1} - s_{n+1}^t) / B, with s_0 = x; the next transition uses the new weights."""
    W = [params[f"W{n}"].clone() for n in range(2)]
    b = [params[f"b{n}"].clone() for n in range(2)]
    B = x.shape[0]
    s = [x, torch.zeros(B, 5, dtype=x.dtype), torch.zeros(B, 3, dtype=x.dtype)]

    def transition(s, nudge):
        h1 = s[0] @ W[0].T + b[0] + s[2] @ W[1]
        h2 = s[1] @ W[1].T + b[1] - nudge * (s[2] - y)
        return [s[0], rho(h1), rho(h2)]

    for _ in range(T1):
        s = transition(s, 0.0)
    acc = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(T2):
        new = transition(s, beta)
        for n in range(2):
            dW = (new[n + 1].T @ new[n] - s[n + 1].T @ s[n]) / (B * beta)
            db = (new[n + 1] - s[n + 1]).sum(0) / (B * beta)
            W[n], b[n] = W[n] + lr * dW, b[n] + lr * db
            acc[f"W{n}"], acc[f"b{n}"] = acc[f"W{n}"] - dW, acc[f"b{n}"] - db
        s = new
    return {**{f"W{n}": W[n] for n in range(2)}, **{f"b{n}": b[n] for n in range(2)}}, acc, s[2]


@pytest.mark.slow
@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
def test_every_engine_follows_the_pinned_per_step_update(where, ray_session):
    beta, T1, T2, lr = 0.2, 20, 8, 0.5  # a large lr: the weights move enough inside the phase to change s
    x, y = batch(NET)
    want_p, want_g, want_out = independent_cep(scaled_params(NET), x, y, beta, T1, T2, lr,
                                               ACTIVATIONS["sigmoid"][0])
    e = engine("cep", WHERE[where], lr)
    try:
        states = run(e, beta, T1, T2)
        got_p, got_g = e.get_params(), e.estimate()
        drift = e.replica_drift()
        e.update()  # updates_in_phases: the end of the batch changes nothing more
        after = e.get_params()
    finally:
        e.close()
    # a few eps of rounding at each of the T1 + T2 steps, carried by contracting dynamics, and T2 updates of lr/beta
    # times G's rounded alike (measured 4.6e-16); a transition at the old weights, or a lost last update, is off by
    # more than 0.1
    tol = 100 * (T1 + T2) * EPS
    assert rel(states["nudged"][-1][-1], want_out) <= tol
    for k in want_p:
        assert rel(got_p[k], want_p[k]) <= tol and rel(got_g[k], want_g[k]) <= tol, k
        assert torch.equal(after[k], got_p[k]), k
    ep_out = engine("ep", None, lr)
    try:
        frozen = run(ep_out, beta, T1, T2)["nudged"][-1][-1]
    finally:
        ep_out.close()
    assert rel(frozen, want_out) > 1e-6  # the per-step updates did change the nudged trajectory
    assert drift.get("W1", 0.0) <= 4 * EPS * float(want_p["W1"].abs().max())  # both ends applied the same change


@pytest.mark.parametrize("sets, field", [(["optimizer=adam"], "optimizer"), (["momentum=0.9"], "momentum"),
                                         (["beta=0"], "beta"), (["lr=-0.1"], "lr")])
def test_bad_cep_settings_are_refused_by_name(sets, field):
    load_config("train", ["protocol=cep", "optimizer=sgd"])  # the good case loads
    with pytest.raises(ConfigError) as err:
        load_config("train", ["protocol=cep", "optimizer=sgd", *sets])
    assert err.value.field == field, str(err.value)


def test_the_nudged_phase_starts_from_the_free_state_and_updates_only_there():
    e = engine("cep", None, 0.3)
    before = e.get_params()
    e.begin()
    e.run_phase(Phase("free", 15))
    assert all(torch.equal(v, before[k]) for k, v in e.get_params().items())  # beta = 0: no per-step change
    e.run_phase(e.program(0.1, 15, 5)[1])
    assert all(not torch.equal(v, before[k]) for k, v in e.get_params().items())


@pytest.mark.slow
def test_cep_adds_no_message_kind_and_only_beta_batch_protocol_reach_every_node(ray_session, tmp_path):
    from experiments.api import Simulator
    report = Simulator(layered("prototypical", (5, 8, 6, 3), "sigmoid"), protocol="cep", engine="fabric",
                       granularity="neuron", hosts=2, dataset="random", optimizer="sgd", lr=1e-3,
                       beta=1e-2, T1=40, T2=10).audit(out=str(tmp_path / "audit"))
    loc = report["locality"]
    assert loc["violations"] == []
    assert {kind for kinds in dict(loc["per_edge"]).values() for kind in kinds} == {"a"}  # neighbour states, nothing else
    assert set(loc["globals"]) == {"batch", "beta", "protocol"}  # eta is fixed at build; the optimiser stays home
    assert set(loc["boundary"]) == {"x", "y"} and all(i.startswith("L3.") for i in loc["boundary"]["y"])
    assert report["replica_drift"] == {"W1": 0.0, "W2": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["ep", "cep"])
def test_the_gdu_toy_matches_bptt_step_by_step_with_an_error_of_order_beta(protocol, tmp_path):
    from experiments.api import Simulator
    sim = Simulator(protocol=protocol, config="gdu-energy-toy", engine="reference")
    rmse = {beta: {k: v["rmse"] for k, v in sim.audit(out=str(tmp_path / f"b{beta}"), beta=beta)["steps"].items()}
            for beta in (1e-3, 1e-2)}
    assert set(rmse[1e-3]) == {"W0", "b0", "W1", "b1", "W2", "b2", "s1", "s2", "s3"}  # parameters and neurons
    for k, small in rmse[1e-3].items():
        assert small <= 5e-3, (k, small)
        assert 5 <= rmse[1e-2][k] / small <= 20, (k, rmse[1e-2][k], small)  # O(beta): ten times beta, ten times
