"""Pure step functions of the layered models (ALGORITHMS.md §1). One arithmetic, two runners.

The in-process reference calls these on whole layers, a fabric node on its own block; the trajectory
audit therefore compares the same arithmetic. No I/O, no Ray, no globals. Shapes are batch-major:
a state block is (B, width). `a` denotes the signal a node sends its neighbours:
  energy: a(s) = rho(s);  prototypical: a(s) = s;  a_0 = x (the input is not passed through rho).

The prototypical update s <- rho(h - beta (s - y)) is computed from the pre-activation u = k h + c, where
rho(z) = g(k z + c) (nodes/activations.PREACTIVATION; sigmoid4: k = 4, c = -2): k and c are folded into the
clamped drive and the matrix products' alpha, so a step is two products and one pass of g. For `energy`,
k = 1 and c = 0 and u = h.
"""
from __future__ import annotations

import torch

from nodes.activations import ACTIVATIONS, PREACTIVATION


def signal(kind: str, activation: str, s):
    """a(s): rho(s) for `energy`, s for `prototypical`."""
    return ACTIVATIONS[activation][0](s) if kind == "energy" else s


def preactivation(kind: str, activation: str) -> tuple:
    """(k, c) with u = k h + c: the activation's inner affine map for `prototypical`, (1, 0) for `energy`."""
    return PREACTIVATION[activation][:2] if kind == "prototypical" else (1.0, 0.0)


def const_drive(b_in, W_in, x=None, k: float = 1.0, c: float = 0.0):
    """The clamped part of u: k (b_{n-1} + W_0 x) + c (W_0 x for layer 1 only). Once per batch, not per step."""
    u = b_in.clone() if x is None else torch.addmm(b_in, x, W_in.T)
    if k != 1.0:
        u.mul_(k)
    if c != 0.0:
        u.add_(c)
    return u


def field(const, W_in, a_pre, W_out=None, a_post=None, k: float = 1.0):
    """u = const + k (W_{n-1} a_{n-1} + W_n^T a_{n+1}): the sum of the Dense partials touching layer n.

    `const` is const_drive's (b_{n-1}, and W_0 x for layer 1, where `a_pre` is None). Always a new tensor.
    """
    if a_pre is None:
        return const.clone() if a_post is None else torch.addmm(const, a_post, W_out, alpha=k)
    u = torch.addmm(const, a_pre, W_in.T, alpha=k)
    return u if a_post is None else u.addmm_(a_post, W_out, alpha=k)


def step(kind: str, activation: str, dt: float, s, u, beta=0.0, y=None):
    """One synchronous step of a block from its field u (all blocks use the old state). Consumes u.

    energy:        s <- s - dt (s - rho'(s) h + beta (s - y))    [u = h; beta term on the output layer only]
    prototypical:  s <- g(u - k beta (s - y)) = rho(h - beta (s - y))   [beta term on the output layer only]
    """
    nudged = y is not None and beta != 0
    if kind == "energy":
        grad = s - ACTIVATIONS[activation][1](s) * u
        if nudged:
            grad = grad + beta * (s - y)
        return s - dt * grad
    k, _, g = PREACTIVATION[activation]
    if nudged:
        u = u - (k * beta) * (s - y)
    return g(u)


def local_grads(a_pre, a_own, a_post=None) -> dict:
    """G(s) for the tensors a block holds, batch means (ALGORITHMS.md §1: dE/dW_n = -rho(s_{n+1}) rho(s_n)^T).

    W_in: -a_n^T a_{n-1} / B  (rows of W{n-1});  b_in: -mean a_n;  W_out: -a_{n+1}^T a_n / B  (cols of W{n}).
    The same form serves `prototypical`, where G = -dPhi/dtheta and a(s) = s.
    """
    return estimate({"s": 1.0}, {"s": (a_pre, a_own, a_post)})


def estimate(coefs: dict, saved: dict) -> dict:
    """g_hat = sum_k c_k G(s_k) from saved (a_pre, a_own, a_post) triples, one product per tensor:
    W_in: -(1/B) [c_k a_own_k]_k^T [a_pre_k]_k, stacking the saved states along the batch (the same sums as
    combining the G(s_k), in one pass). `coefs` {name: c_k}, `saved` {name: (a_pre, a_own, a_post)}."""
    names = list(coefs)
    B = saved[names[0]][1].shape[0]
    own = torch.cat([saved[k][1] * coefs[k] for k in names])
    g = {"W_in": torch.mm(own.T, torch.cat([saved[k][0] for k in names])).div_(-B),
         "b_in": own.sum(0).div_(-B)}
    if saved[names[0]][2] is not None:
        g["W_out"] = torch.mm(torch.cat([saved[k][2] for k in names]).T, own).div_(-B)
    return g


CHECK_EVERY = 10  # steps between divergence checks (and the last step): a check costs a pass and a host sync


def check_due(t: int, steps: int) -> bool:
    """Whether the state after step t (1-based) of a `steps`-step phase is checked for divergence."""
    return t % CHECK_EVERY == 0 or t == steps


def divergence(s, limit: float):
    """None if max |s| <= limit, else what is wrong ('is NaN' or 'diverged (max |s| = ...)')."""
    m = float(s.abs().max()) if s.numel() else 0.0
    if m <= limit:
        return None
    return "is NaN" if m != m else f"diverged (max |s| = {m:.3g})"


def cost(s_out, y):
    """L = batch mean of 1/2 ||s_N - y||^2."""
    return 0.5 * ((s_out - y) ** 2).sum(-1).mean()
