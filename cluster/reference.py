"""The in-process engine: the whole model as one partition per layer, same step functions as the nodes.

`relax` is the vectorised reference dynamics (ALGORITHMS.md §1), used with `torch.no_grad` for training
and audits and with autograd for BPTT (cluster/bptt.py). The clamped input drive W0 x + b0 is computed
once per parameter set, not per step.
"""
from __future__ import annotations

import torch

from nodes.dynamics import (check_due, const_drive, divergence, estimate, field, local_grads, preactivation,
                            signal, step)
from nodes.optim import Optimizer
from protocols import get_protocol
from protocols.base import run_schedule


def relax(model, params, x, steps, s=None, beta=0.0, y=None, params_at=None, on_step=None, check=None):
    """Run `steps` synchronous steps of layers 1..N from `s` (zeros if None); returns the list of states.

    `params_at(t)`, if given, supplies the parameters of transition t (BPTT per-step copies);
    `on_step(t, s)` sees every state s_t, t = 1..steps; `check(t, s)` may raise on divergence.
    """
    N, kind, act = model.N, model.kind, model.activation
    k, c0 = preactivation(kind, act)
    if s is None:
        s = [torch.zeros(x.shape[0], d, dtype=x.dtype, device=x.device) for d in model.sizes[1:]]
    consts = {}
    for t in range(steps):
        p = params if params_at is None else params_at(t)
        c = consts.get(id(p))
        if c is None:
            c = consts[id(p)] = ([const_drive(p["b0"], p["W0"], x, k, c0)]
                                 + [const_drive(p[f"b{n - 1}"], None, None, k, c0) for n in range(2, N + 1)])
        a = [signal(kind, act, sn) for sn in s]
        s = [step(kind, act, model.dt, s[n - 1],
                  field(c[n - 1], p[f"W{n - 1}"], a[n - 2] if n > 1 else None,
                        p.get(f"W{n}") if n < N else None, a[n] if n < N else None, k),
                  beta if n == N else 0.0, y if n == N else None)
             for n in range(1, N + 1)]
        if check is not None:
            check(t + 1, s)
        if on_step is not None:
            on_step(t + 1, s)
    return s


def layer_grads(model, x, s) -> dict:
    """G(s) for every parameter: W{n-1}, b{n-1} from layer n's block rule (nodes/dynamics.local_grads)."""
    a = [x] + [signal(model.kind, model.activation, sn) for sn in s]
    out = {}
    for n in range(1, model.N + 1):
        g = local_grads(a[n - 1], a[n])
        out[f"W{n - 1}"], out[f"b{n - 1}"] = g["W_in"], g["b_in"]
    return out


class ReferenceEngine:
    """Engine API shared with the fabric: set_params, get_params, set_batch, run_phase, update, output."""

    name = "reference"

    def __init__(self, model, protocol: str, dtype=torch.float64, lrs=None, optimizer="sgd", momentum=0.0,
                 device="cpu", diverge_limit=1e6):
        self.model, self.protocol = model, protocol
        self.dtype, self.device = dtype, torch.device(device)
        self.lrs = lrs or {}
        self.opt = Optimizer(optimizer, momentum)
        self.diverge_limit = diverge_limit
        self.params = {}
        self.saved = {}
        self.x = self.y = None

    def set_params(self, params: dict) -> None:
        self.params = {k: v.detach().to(self.device, self.dtype).clone() for k, v in params.items()}

    def get_params(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.params.items()}

    def set_batch(self, x, y=None) -> None:
        self.x = torch.as_tensor(x).to(self.device, self.dtype)
        self.y = None if y is None else torch.as_tensor(y).to(self.device, self.dtype)

    def _check(self, phase, steps):
        """Divergence check every CHECK_EVERY steps and at the last (nodes/dynamics.divergence)."""
        def check(t, s):
            if not check_due(t, steps):
                return
            for n, sn in enumerate(s, start=1):
                bad = divergence(sn, self.diverge_limit)
                if bad:
                    raise FloatingPointError(f"node L{n}, phase {phase}, step {t}: state {bad}")
        return check

    @torch.no_grad()
    def run_phase(self, name, steps, beta, start, record_states=False, record_grads=False) -> dict:
        s0 = None if start == "zero" else self.saved[start]
        traj = [s0 or [torch.zeros(self.x.shape[0], d, dtype=self.dtype, device=self.device)
                       for d in self.model.sizes[1:]]] if (record_states or record_grads) else None
        on_step = (lambda t, s: traj.append(s)) if traj is not None else None
        s = relax(self.model, self.params, self.x, steps, s0, beta, self.y, on_step=on_step,
                  check=self._check(name, steps))
        self.saved[name] = s
        out = {}
        if record_states:
            out["states"] = [torch.stack([st[n] for st in traj]).cpu() for n in range(self.model.N)]
        if record_grads:
            G = [layer_grads(self.model, self.x, st) for st in traj]
            out["grad_steps"] = {k: (torch.stack([g[k] for g in G[1:]]) - torch.stack([g[k] for g in G[:-1]]))
                                 / beta for k in G[0]}
        return out

    @torch.no_grad()
    def update(self, beta: float, apply: bool = True, gather: bool = True) -> dict:
        coefs = get_protocol(self.protocol).coefficients(beta)
        m = self.model
        a = {k: [self.x] + [signal(m.kind, m.activation, sn) for sn in self.saved[k]] for k in coefs}
        g = {}
        for n in range(1, m.N + 1):  # layer n's rule gives W{n-1}, b{n-1} (W_out is the next layer's)
            est = estimate(coefs, {k: (a[k][n - 1], a[k][n], None) for k in coefs})
            g[f"W{n - 1}"], g[f"b{n - 1}"] = est["W_in"], est["b_in"]
        if apply:
            self.opt.step(self.params, g, self.lrs)
        return g

    def train_batch(self, x, y, beta: float, T1: int, T2: int):
        """set_batch, the protocol's phases, the update; returns the free phase's output."""
        self.set_batch(x, y)
        run_schedule(get_protocol(self.protocol), self, beta, T1, T2)
        self.update(beta, apply=True, gather=False)
        return self.output("free")

    def infer(self, x, steps: int):
        self.set_batch(x)
        self.run_phase("free", steps, 0.0, "zero")
        return self.output("free")

    def output(self, name: str = "free"):
        return self.saved[name][-1]

    def close(self) -> None:
        pass
