"""Pure step functions of the layered models (ALGORITHMS.md §1). One arithmetic, two runners.

The in-process reference calls these on whole layers, a fabric node on its own block; the trajectory
audit therefore compares the same arithmetic. No I/O, no Ray, no globals. Shapes are batch-major:
a state block is (B, width). `a` denotes the signal a node sends its neighbours:
  energy: a(s) = rho(s);  prototypical: a(s) = s;  a_0 = x (the input is not passed through rho).
"""
from __future__ import annotations

import torch

from nodes.activations import ACTIVATIONS


def signal(kind: str, activation: str, s):
    """a(s): rho(s) for `energy`, s for `prototypical`."""
    return ACTIVATIONS[activation][0](s) if kind == "energy" else s


def const_drive(b_in, W_in, x=None):
    """The clamped part of the field: b_{n-1} (+ W_0 x for layer 1). Computed once per batch, not per step."""
    return b_in if x is None else torch.addmm(b_in, x, W_in.T)


def field(const, W_in, a_pre, W_out=None, a_post=None):
    """h_n = W_{n-1} a_{n-1} + b_{n-1} + W_n^T a_{n+1}: the sum of the Dense partials touching layer n.

    `const` holds b_{n-1} (and W_0 x for layer 1, then `a_pre` is None).
    """
    h = const if a_pre is None else torch.addmm(const, a_pre, W_in.T)
    if a_post is not None:
        h = torch.addmm(h, a_post, W_out)
    return h


def step(kind: str, activation: str, dt: float, s, h, beta=0.0, y=None):
    """One synchronous step of a block from its field h (all blocks use the old state).

    energy:        s <- s - dt (s - rho'(s) h + beta (s - y))    [beta term on the output layer only]
    prototypical:  s <- sigma(h - beta (s - y))                   [beta term on the output layer only]
    """
    rho, rho_prime = ACTIVATIONS[activation]
    nudged = y is not None and beta != 0
    if kind == "energy":
        grad = s - rho_prime(s) * h
        if nudged:
            grad = grad + beta * (s - y)
        return s - dt * grad
    if nudged:
        h = h - beta * (s - y)
    return rho(h)


def local_grads(a_pre, a_own, a_post=None) -> dict:
    """G(s) for the tensors a block holds, batch means (ALGORITHMS.md §1: dE/dW_n = -rho(s_{n+1}) rho(s_n)^T).

    W_in: -a_n^T a_{n-1} / B  (rows of W{n-1});  b_in: -mean a_n;  W_out: -a_{n+1}^T a_n / B  (cols of W{n}).
    The same form serves `prototypical`, where G = -dPhi/dtheta and a(s) = s.
    """
    B = a_own.shape[0]
    g = {"W_in": -(a_own.T @ a_pre) / B, "b_in": -a_own.mean(0)}
    if a_post is not None:
        g["W_out"] = -(a_post.T @ a_own) / B
    return g


def cost(s_out, y):
    """L = batch mean of 1/2 ||s_N - y||^2."""
    return 0.5 * ((s_out - y) ** 2).sum(-1).mean()
