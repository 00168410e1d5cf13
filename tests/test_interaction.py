"""A new interaction is one class in one file, and nothing else changes: a diagonal coupling defined here, in a test,
runs on the layer, neuron and hosted fabrics and in-process with the same results, its EP estimate agrees with
BPTT through the same dynamics, and the centralised vector field (cluster/truth/nonconservative.py) runs on it from
the whole-group form it declares.

    Diagonal(src, dst, d):   E contains a(dst) . (d * a(src))   (groups of equal size, d of shape (size,))
        drive:   u_dst,j += d_j a_src,j   and, symmetric, u_src,j += d_j a_dst,j
        G:       dE/dd_j = -mean_b a_dst,bj a_src,bj   (docs/algorithms.md §1's sign: G = -rho(post) rho(pre))
        whole groups (a = rho(s)):  du_dst/ds_src = diag(d rho'(s_src)),  du_src/ds_dst = diag(d rho'(s_dst))
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cluster.inprocess import ReferenceEngine
from cluster.runtime.coordinator import FabricEngine, lrs_by_param
from cluster.inprocess import relax
from cluster.truth.bptt import bptt_grad
from cluster.truth.nonconservative import Field
from nodes.graph import Dense, Grad, Group, Held, Interaction, Model, Term
from nodes.interface import INTERACTIONS
from protocols import get_protocol
from tests.conftest import batch, rel, scaled_params


@dataclass(frozen=True)
class DiagonalTerm(Term):
    """u_j += d_j a_slot,(lo + j): the operand M of u += a_slot M is (size, width) with M[lo + j, j] = d_j."""

    lo: int = 0
    size: int = 0

    def operand(self, W):
        j = torch.arange(W.shape[0])
        return torch.zeros(self.size, W.shape[0], dtype=W.dtype).index_put((j + self.lo, j), W)


@dataclass(frozen=True)
class DiagonalGrad(Grad):
    """-sum_k c_k sum_b a_dst a_src on the node's units, with c_k on the destination's (post-synaptic) signal."""

    lo: int = 0
    own_is_post: bool = True
    reads_inbox = True

    def value(self, p):
        w = p.terms[0][1].shape[1]
        other = [sl[self.slot][:, self.lo:self.lo + w] for _, _, sl, _, _ in p.terms]
        if self.own_is_post:
            return (p.own() * p.cat(other)).sum(0)
        return (p.cat([o * c for o, (c, *_) in zip(other, p.terms)]) * p.cat([k[1] for k in p.terms])).sum(0)


@dataclass(frozen=True)
class Diagonal(Interaction):
    src: str
    dst: str
    d: str

    def validate(self, model):
        if model.group(self.src).size != model.group(self.dst).size:
            raise ValueError(f"model {model.name}: {self.d} couples groups of different sizes")

    def shapes(self, model):
        return {self.d: (model.group(self.dst).size,)}

    def init(self, model, gen, scale):
        return {self.d: (torch.rand(self.shapes(model)[self.d], generator=gen, dtype=torch.float64) - 0.5) * scale}

    def share(self, model, b, need):
        n = model.group(self.dst).size
        eye = tuple(tuple(int(i == j) for j in range(n)) for i in range(n))  # who is whose neighbour
        own = (b.lo, b.hi)
        held, terms, grads = {}, [], {}
        if b.group == self.dst:
            slot = need(self.src, eye, rows=own)
            held[self.d] = Held(self.d, own, None, "primary")
            terms.append(DiagonalTerm("diag", self.d, slot, lo=b.lo, size=n))
            grads[self.d] = DiagonalGrad("diag", slot, lo=b.lo)
        if b.group == self.src:
            local = f"{self.d}.replica"
            slot = need(self.dst, eye, cols=own)
            held[local] = Held(self.d, own, None, "replica")
            terms.append(DiagonalTerm("diag", local, slot, lo=b.lo, size=n))
            grads[local] = DiagonalGrad("diag", slot, lo=b.lo, own_is_post=False)
        return held, terms, grads, ()

    def add_drive(self, model, u, params, a):
        u[self.dst] = u[self.dst] + params[self.d] * a[self.src]
        u[self.src] = u[self.src] + params[self.d] * a[self.dst]

    def add_jacobian(self, model, J, params, da, span):
        (r0, r1), (c0, c1) = span[self.dst], span[self.src]
        J[:, r0:r1, c0:c1] += torch.diag_embed(params[self.d] * da[self.src])
        J[:, c0:c1, r0:r1] += torch.diag_embed(params[self.d] * da[self.dst])

    def add_vjp(self, model, out, params, da, d):
        out[self.src] = out[self.src] + da[self.src] * (params[self.d] * d[self.dst])
        out[self.dst] = out[self.dst] + da[self.dst] * (params[self.d] * d[self.src])


MODEL = Model("diagonal-demo", "energy", "sigmoid",
              (Group("L0", 4, "input"), Group("L1", 5), Group("L2", 5), Group("L3", 3, "output")),
              (Dense("L0", "L1", "W0", "b0"), Diagonal("L1", "L2", "d1"), Dense("L2", "L3", "W2", "b2")), dt=0.5,
              lr_index={"W0": 0, "b0": 0, "d1": 1, "W2": 2, "b2": 2})
LR = [0.05, 0.1, 0.1]
# Neuron nodes exchange one message per port per step across 3 host actors, or frames across 2 (an actor per
# neuron moves the same messages between more processes: tests/test_fabric.py runs that partition)
FABRICS = [dict(granularity="layer"), dict(granularity="neuron", hosts=3, exchange="messages"),
           dict(granularity="neuron", hosts=2), dict(granularity="layer", split=2, hosts=1)]


def _estimate(engine, x, y, beta=1e-2, T1=40, T2=12):
    try:
        engine.set_params(scaled_params(MODEL))
        engine.set_batch(x, y)
        engine.run_program(get_protocol("ep-symmetric").program(beta, T1, T2))
        return engine.estimate(), engine.estimate_drift()
    finally:
        engine.close()


def test_registered_and_declared_by_itself():
    assert INTERACTIONS["Diagonal"] is Diagonal and INTERACTIONS["Dense"] is Dense
    assert MODEL.param_shapes()["d1"] == (5,)
    specs = MODEL.node_specs(MODEL.partition("neuron"))
    assert {p.src for p in specs["L2.3"].in_ports} == {"L1.3", "L3.0", "L3.1", "L3.2"}  # its diagonal partner only
    with pytest.raises(ValueError, match="different sizes"):
        Model("bad", "energy", "sigmoid", (Group("a", 2, "input"), Group("b", 3, "output")),
              (Diagonal("a", "b", "d"),))


@pytest.mark.slow
@pytest.mark.parametrize("where", FABRICS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_fabric_equals_in_process(where, ray_session):
    x, y = batch(MODEL, seed=4)
    # A partition sums a unit's drive in its own order, so states agree to rounding (~1e-16 relative); the estimate
    # divides a difference of G's by beta, so its rounding is ~1e-16 |G| / (beta |g|) relative to g. Far from the
    # output |G| / |g| reaches ~1e3 here (W0), hence beta = 0.1 for a 1e-12 bound with a margin of ten.
    ref, _ = _estimate(ReferenceEngine(MODEL, "ep-symmetric", torch.float64, lrs_by_param(MODEL, LR)), x, y, 0.1)
    got, drift = _estimate(FabricEngine(MODEL, "ep-symmetric", dict(lr=LR, dtype="float64", timeout_s=30.0, **where)),
                           x, y, 0.1)
    for k in ref:
        assert rel(got[k], ref[k]) <= 1e-12, k
    assert drift["d1"] <= 1e-15  # owner and replica computed the same product


def test_estimate_agrees_with_bptt_to_first_order_in_beta():
    """Symmetric nudging's bias is O(beta^2) (docs/algorithms.md §4): two betas a factor 4 apart must cut the error
    against BPTT by about 16 (a fitted slope near 2), and the estimate must point where BPTT's gradient does."""
    x, y = batch(MODEL, seed=5)
    params = scaled_params(MODEL)
    truth = bptt_grad(MODEL, params, x, y, 60)
    errs = []
    for beta in (0.04, 0.01):
        g, _ = _estimate(ReferenceEngine(MODEL, "ep-symmetric", torch.float64, lrs_by_param(MODEL, LR)), x, y,
                         beta=beta, T1=60, T2=60)
        errs.append(rel(torch.cat([g[k].flatten() for k in truth]), torch.cat([truth[k].flatten() for k in truth])))
        assert float(torch.nn.functional.cosine_similarity(g["d1"], truth["d1"], dim=0)) > 0.999
    slope = torch.log(torch.tensor(errs[0] / errs[1])) / torch.log(torch.tensor(4.0))
    assert 1.7 <= float(slope) <= 2.3, (errs, float(slope))


def test_the_centralised_field_runs_on_it_from_its_declared_whole_group_form():
    """On a vector field with a directed Dense, the Diagonal and a symmetric Dense: f is the nodes' own Euler step,
    its Jacobian autograd's and J^T d the Jacobian's transpose applied to d."""
    model = Model("diagonal-field", "vector-field", "tanh", MODEL.groups,
                  (Dense("L0", "L1", "W0", "b0", symmetric=False), Diagonal("L1", "L2", "d1"),
                   Dense("L2", "L3", "W2", "b2")), dt=0.2)
    params = scaled_params(model)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    F = Field(model, params, x)
    S = torch.randn(3, F.n, generator=gen, dtype=torch.float64)
    parts = list(torch.split(S, [g.size for g in model.dynamic_groups], 1))
    assert torch.allclose(torch.cat(relax(model, params, x, 1, s=parts), 1), S + F.dt * F(S), rtol=0, atol=1e-15)
    J = torch.stack([torch.autograd.functional.jacobian(lambda v: Field(model, params, x[b:b + 1])(v[None])[0], S[b])
                     for b in range(len(S))])
    assert torch.allclose(F.jacobian(S), J, rtol=0, atol=1e-14)
    d = torch.randn(S.shape, generator=gen, dtype=torch.float64)
    assert torch.allclose(F.jt(S, d), torch.bmm(J.transpose(1, 2), d.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-14)
