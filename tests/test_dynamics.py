"""The explicit step and estimator formulas equal autograd of the pinned energies (docs/algorithms.md §1)."""
import pytest
import torch

from cluster.inprocess import relax
from nodes.activations import ACTIVATIONS
from nodes.graph import assemble
from nodes.layered import layered
from nodes.rules import NodeRule
from protocols.base import Protocol
from tests.conftest import batch, scaled_params


def LayeredModel(kind, sizes, activation, dt=1.0):
    return layered(kind, sizes, activation, dt)


def layer_grads(m, x, s):
    """G(s) of every parameter from the nodes' own rule (NodeRule.G) on the layer partition, owners' copies."""
    specs = m.node_specs(m.partition("layer"))
    rules = {i: NodeRule(sp, Protocol()) for i, sp in specs.items()}
    a = {i: rules[i].phys.signal(sn) for i, sn in zip(specs, s)}
    held = {}
    for i, sp in specs.items():
        inbox = {name: a[sl.parts[0][0]] for name, sl in sp.slots.items()}
        held[i] = rules[i].G(a[i], inbox, {"x": x})
    return assemble(m, specs, held)


def energy(model, params, x, s, beta=0.0, y=None):
    """E(s) + beta l: sum 1/2||s_n||^2 - sum rho(s_{n+1}).(W_n rho(s_n) + b_n), rho(s_0) = x."""
    rho = ACTIVATIONS[model.activation][0]
    a = [x] + [rho(sn) for sn in s]
    E = sum(0.5 * (sn ** 2).sum() for sn in s)
    E = E - sum((a[n + 1] * (a[n] @ params[f"W{n}"].T + params[f"b{n}"])).sum() for n in range(len(model.sizes) - 1))
    if y is not None:
        E = E + beta * 0.5 * ((s[-1] - y) ** 2).sum()
    return E


def phi(model, params, x, s, beta=0.0, y=None):
    a = [x] + list(s)
    P = sum((a[n + 1] * (a[n] @ params[f"W{n}"].T + params[f"b{n}"])).sum() for n in range(len(model.sizes) - 1))
    if y is not None:
        P = P - beta * 0.5 * ((s[-1] - y) ** 2).sum()
    return P


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "sigmoid4", "hardsigmoid"])
def test_energy_step_is_euler_on_autograd_of_F(activation):
    m = LayeredModel("energy", (4, 5, 3, 2), activation, dt=0.3)
    p = scaled_params(m)
    x, y = batch(m)
    s = [torch.rand(6, d, dtype=torch.float64, requires_grad=True) for d in m.sizes[1:]]
    F = energy(m, p, x, s, beta=0.7, y=y)
    grads = torch.autograd.grad(F, s)
    expected = [sn - 0.3 * g for sn, g in zip(s, grads)]
    got = relax(m, p, x, 1, [sn.detach() for sn in s], beta=0.7, y=y)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e.detach(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid4"])
def test_prototypical_step_is_sigma_of_dphi(activation):
    m = LayeredModel("prototypical", (4, 5, 3, 2), activation)
    p = scaled_params(m)
    x, y = batch(m)
    s = [torch.rand(6, d, dtype=torch.float64, requires_grad=True) for d in m.sizes[1:]]
    grads = torch.autograd.grad(phi(m, p, x, s, beta=0.4, y=y), s)
    rho = ACTIVATIONS[activation][0]
    got = relax(m, p, x, 1, [sn.detach() for sn in s], beta=0.4, y=y)
    for g, e in zip(got, grads):
        torch.testing.assert_close(g, rho(e), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kind", ["energy", "prototypical"])
def test_local_grads_equal_dE_dtheta_batch_mean(kind):
    m = LayeredModel(kind, (4, 5, 3), "sigmoid", dt=0.5)
    p = {k: v.clone().requires_grad_(True) for k, v in scaled_params(m).items()}
    x, _ = batch(m)
    s = [torch.rand(6, d, dtype=torch.float64) for d in m.sizes[1:]]
    G = energy(m, p, x, s) / 6 if kind == "energy" else -phi(m, p, x, s) / 6
    auto = dict(zip(p, torch.autograd.grad(G, list(p.values()))))
    got = layer_grads(m, x, s)
    for k in auto:
        torch.testing.assert_close(got[k], auto[k], rtol=1e-13, atol=1e-14)


def test_hardsigmoid_derivative_is_one_on_closed_interval():
    d = ACTIVATIONS["hardsigmoid"][1](torch.tensor([-0.1, 0.0, 0.5, 1.0, 1.1]))
    assert d.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
