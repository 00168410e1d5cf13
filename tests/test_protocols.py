"""Protocols are phase programs plus local rules, found by discovery. Two protocols defined here, in this test file
alone, prove the interface: one changes every synapse at every step of its nudged phase, one runs complex states
and a complex beta. Both run on the fabric (complex arrays on the wire, per-step parameter changes inside hosts)
and in-process with equal results. They are proofs of the interface, not the full C-EP and hEP."""
import cmath

import pytest
import torch

from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import FabricEngine, lrs_by_param
from cluster.inprocess import ReferenceEngine
from nodes.layered import layered
from protocols import PROTOCOLS, get_protocol
from protocols.base import Phase, Protocol, add
from tests.conftest import batch, rel, scaled_params

NET = layered("prototypical", (4, 5, 3), "sigmoid")


class Stepwise(Protocol):
    """Every synapse changes at every step of every phase, from what it sees at that step: g_t = G(s_t) / steps (a
    Hebbian drift, applied as theta -= lr g_t before the step's transition); the estimate is the sum of the g_t."""

    name = "test-stepwise"
    has_step_rule = True
    updates_in_phases = True

    def program(self, beta, T1, T2):
        return Phase("free", T1), Phase("nudged", T2, beta, "free")

    def on_step(self, phase, t, mem, G):
        g = dict(G(1.0 / phase.steps))
        return {**mem, "acc": add(mem.get("acc"), g)}, g


class Holomorphic(Protocol):
    """N complex nudged phases at beta_k = |beta| e^{2 pi i k / N} from the free state, each accumulating
    G(s_k) / (N beta_k); the estimate is the real part (docs/algorithms.md §7)."""

    name = "test-holomorphic"
    keys = ("N",)

    def program(self, beta, T1, T2):
        N = self.settings["N"]
        ks = [abs(beta) * cmath.exp(2j * cmath.pi * k / N) for k in range(N)]
        return (Phase("free", T1),) + tuple(Phase(f"k{k}", T2, b, "free", complex=True, coef=1 / (N * b))
                                            for k, b in enumerate(ks))


def engines(protocol, fabric_settings, model=NET, lr=0.1):
    ref = ReferenceEngine(model, protocol, torch.float64, lrs_by_param(model, [lr] * 2))
    fab = FabricEngine(model, protocol, dict(lr=[lr] * 2, dtype="float64", transport="zmq", timeout_s=20.0,
                                             **fabric_settings))
    for e in (ref, fab):
        e.set_params(scaled_params(model))
        e.set_batch(*batch(model))
    return ref, fab


def test_discovery_finds_every_protocol_module():
    import pkgutil

    import protocols
    import importlib
    modules = {m.name for m in pkgutil.iter_modules(protocols.__path__)} - {"base"}
    modules = {m for m in modules if not m.startswith("_")}  # a private module may hold a shared base class
    for m in modules:  # every module's PROTOCOL is registered under its own name, and nothing else is
        p = importlib.import_module(f"protocols.{m}").PROTOCOL
        assert PROTOCOLS[p.name] is p, m
    assert len(modules) == len(PROTOCOLS)
    assert {"ep", "ep-symmetric", "ep-random-sign", "cep", "vf", "cvf", "hep", "hep-fast", "hep-osc", "aep",
            "aep-symmetric", "dyadic", "rhel", "heb"} <= set(PROTOCOLS)  # the shipped families are all found
    assert get_protocol(Holomorphic(N=3)).settings == {"N": 3}  # an object passes through
    with pytest.raises(ValueError, match="protocol: unknown protocol 'no-such-rule'"):
        get_protocol("no-such-rule")


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(granularity="layer"), dict(granularity="neuron", hosts=2)],
                         ids=["layer", "neuron-hosts2"])
def test_a_per_step_rule_changes_parameters_inside_the_phase_alike_on_both_engines(where, ray_session):
    lr = 0.05
    ref, fab = engines(Stepwise(), where, lr=lr)
    try:
        before = ref.get_params()
        program = ref.program(0.2, 20, 8)
        for e in (ref, fab):
            e.run_program(program)
        g_ref, g_fab = ref.estimate(), fab.estimate()
        after_ref, after_fab = ref.get_params(), fab.get_params()
        for k in before:
            assert rel(g_fab[k], g_ref[k]) <= 1e-12 and rel(after_fab[k], after_ref[k]) <= 1e-12, k
            # the parameters moved inside the phases by exactly -lr times the accumulated per-step gradients
            torch.testing.assert_close(after_ref[k] - before[k], -lr * g_ref[k], rtol=1e-10, atol=1e-15)
        assert fab.replica_drift() == {"W1": 0.0}  # both ends of W1 applied the same change at every step
    finally:
        fab.close()


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(granularity="layer"), dict(granularity="neuron", hosts=2)],
                         ids=["layer", "neuron-hosts2"])
def test_complex_states_and_beta_run_alike_on_both_engines(where, ray_session):
    ref, fab = engines(Holomorphic(N=3), where)
    try:
        program = ref.program(0.3, 30, 15)
        assert program[1].complex and isinstance(program[2].beta, complex)
        for e in (ref, fab):
            e.run_program(program)
        g_ref, g_fab = ref.estimate(), fab.estimate()
        for k in g_ref:
            assert not g_ref[k].is_complex() and rel(g_fab[k], g_ref[k]) <= 1e-12, k
        logs = fab.message_logs()["nodes"]
        assert any(c[3] == "k1" for log in logs.values() for c in log["counters"])  # complex phases crossed the wire
    finally:
        fab.close()


def test_two_complex_points_equal_symmetric_ep_and_more_points_shrink_the_error():
    x, y = batch(NET)
    params = scaled_params(NET)
    truth = bptt_grad(NET, params, x, y, 60)

    def estimate(protocol, beta=0.2):
        e = ReferenceEngine(NET, protocol, torch.float64)
        e.set_params(params)
        e.set_batch(x, y)
        e.run_program(e.program(beta, 60, 60))
        g = e.estimate()
        return g, rel(torch.cat([g[k].flatten() for k in truth]), torch.cat([truth[k].flatten() for k in truth]))

    (g2, e2), (gs, _) = estimate(Holomorphic(N=2)), estimate("ep-symmetric")
    for k in gs:
        assert rel(g2[k], gs[k]) <= 1e-13, k  # beta_k = +-|beta|: the same numbers, in complex arithmetic
    e4 = estimate(Holomorphic(N=4))[1]
    e4_half = estimate(Holomorphic(N=4), beta=0.1)[1]
    assert e4 < e2 / 10  # the aliasing error is O(|beta|^N) ...
    assert 8 < e4 / e4_half < 32, (e4, e4_half)  # ... halving |beta| divides it by about 2^4
