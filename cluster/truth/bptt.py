"""Ground truth: BPTT through the same T1 discrete free steps (docs/algorithms.md §1 "Reference", §5.2).

L = batch mean of 1/2 ||s_N(T1) - y||^2, states from zero, differentiated by autograd through `relax`. With
`noise` = (std, seed, draw) the free trajectory carries the nodes' very pre-activation noise (nodes/noise.py), so the
truth is the gradient of the noisy free phase's loss.
"""
from __future__ import annotations

import torch

from cluster.inprocess import relax
from nodes.dynamics import cost


def bptt_grad(model, params: dict, x, y, T1: int, with_output: bool = False, noise=None):
    """dL/dtheta for L = cost(s_N after T1 free steps) (and s_N itself when `with_output`)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        s = relax(model, leaves, x, T1, noise=noise)
        L = cost(s[-1], y)
        grads = torch.autograd.grad(L, list(leaves.values()))
    g = dict(zip(leaves, (g.detach() for g in grads)))
    return (g, s[-1].detach()) if with_output else g


def bptt_steps(model, params: dict, x, y, T1: int, T2: int, noise=None) -> dict:
    """Per-transition BPTT contributions, `bptt_steps[t]` = dL/dtheta of the transition producing s_{T1-t},
    t = 0..T2-1 (§5.2 pairing), by one leaf copy of theta per transition."""
    base = {k: v.detach() for k, v in params.items()}
    with torch.enable_grad():
        copies = [{k: v.clone().requires_grad_(True) for k, v in base.items()} for _ in range(T2)]

        def params_at(t):  # transition t produces s_{t+1}; the last T2 transitions get their own copy
            k = T1 - 1 - t
            return copies[k] if 0 <= k < T2 else base

        s = relax(model, base, x, T1, params_at=params_at, noise=noise)
        L = cost(s[-1], y)
        flat = [v for c in copies for v in c.values()]
        grads = torch.autograd.grad(L, flat, allow_unused=True)
    names = list(base)
    out = {k: [] for k in names}
    for i, g in enumerate(grads):
        out[names[i % len(names)]].append(torch.zeros_like(flat[i]) if g is None else g.detach())
    return {k: torch.stack(v) for k, v in out.items()}


def bptt_state_steps(model, params: dict, x, y, T1: int, T2: int, noise=None) -> dict:
    """The neurons' BPTT series, {"s{n}": (T2, B, d_n)}: entry t = -dl/ds_{T1-t}, t = 0..T2-1, per sample
    (l = 1/2 ||s_N - y||^2 of that sample, i.e. -B dL/ds for the batch mean L). From the free trajectory, each
    s_{T1-t} is made a leaf and relaxed the remaining t steps."""
    base = {k: v.detach() for k, v in params.items()}
    traj = {}

    def keep(t, s):
        if t >= T1 - T2 + 1:
            traj[t] = [v.detach() for v in s]

    relax(model, base, x, T1, on_step=keep, noise=noise)
    B = x.shape[0]
    names = [f"s{model.groups.index(g)}" for g in model.dynamic_groups]
    series = {k: [] for k in names}
    with torch.enable_grad():
        for t in range(T2):
            leaves = [v.clone().requires_grad_(True) for v in traj[T1 - t]]
            s = relax(model, base, x, t, s=leaves, noise=noise, t0=T1 - t) if t else leaves
            grads = torch.autograd.grad(cost(s[-1], y), leaves, allow_unused=True)
            for k, v, g in zip(names, leaves, grads):
                series[k].append(-B * (torch.zeros_like(v) if g is None else g))
    return {k: torch.stack(v) for k, v in series.items()}
