"""The in-process engine: the whole model as one partition per layer, same step functions as the nodes.

`relax` is the vectorised reference dynamics (ALGORITHMS.md §1), used with autograd for BPTT (cluster/bptt.py)
and for phases that record their trajectory; the engine's other phases run the same `layers_step` on fixed
buffers (cluster/captured.py: a CUDA graph per (batch size, beta) on a GPU). The clamped input drive W0 x + b0
is computed once per phase, not per step.
"""
from __future__ import annotations

import torch

from cluster.captured import StaticLoop
from nodes.dynamics import (CHECK_EVERY, check_due, const_drive, divergence, estimate, field, local_grads,
                            preactivation, signal, step)
from nodes.optim import Optimizer
from protocols import get_protocol
from protocols.base import run_schedule


def const_drives(model, p, x) -> list:
    """The clamped part of every layer's u (nodes/dynamics.const_drive): k (W0 x + b0) + c, then k b_{n-1} + c."""
    k, c0 = preactivation(model.kind, model.activation)
    return ([const_drive(p["b0"], p["W0"], x, k, c0)]
            + [const_drive(p[f"b{n - 1}"], None, None, k, c0) for n in range(2, model.N + 1)])


def layers_step(model, p, c, s, beta=0.0, y=None) -> list:
    """One synchronous step of layers 1..N (nodes/dynamics.step on each, all from the old states s)."""
    N, kind, act = model.N, model.kind, model.activation
    k = preactivation(kind, act)[0]
    a = [signal(kind, act, sn) for sn in s]
    return [step(kind, act, model.dt, s[n - 1],
                 field(c[n - 1], p[f"W{n - 1}"], a[n - 2] if n > 1 else None,
                       p.get(f"W{n}") if n < N else None, a[n] if n < N else None, k),
                 beta if n == N else 0.0, y if n == N else None)
            for n in range(1, N + 1)]


def relax(model, params, x, steps, s=None, beta=0.0, y=None, params_at=None, on_step=None, check=None):
    """Run `steps` synchronous steps of layers 1..N from `s` (zeros if None); returns the list of states.

    `params_at(t)`, if given, supplies the parameters of transition t (BPTT per-step copies);
    `on_step(t, s)` sees every state s_t, t = 1..steps; `check(t, s)` may raise on divergence.
    """
    if s is None:
        s = [torch.zeros(x.shape[0], d, dtype=x.dtype, device=x.device) for d in model.sizes[1:]]
    consts = {}
    for t in range(steps):
        p = params if params_at is None else params_at(t)
        c = consts.get(id(p))
        if c is None:
            c = consts[id(p)] = const_drives(model, p, x)
        s = layers_step(model, p, c, s, beta, y)
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
                 device="cpu", diverge_limit=1e6, capture=True):
        """capture: on CUDA, replay each phase's steps as CUDA graphs (cluster/captured.py); ignored elsewhere."""
        self.model, self.protocol = model, protocol
        self.dtype, self.device = dtype, torch.device(device)
        self.lrs = lrs or {}
        self.opt = Optimizer(optimizer, momentum)
        self.diverge_limit = diverge_limit
        self.params = {}
        self.saved = {}
        self.x = self.y = None
        self.capture = bool(capture) and self.device.type == "cuda"
        self.loops = {}  # (B, beta) -> StaticLoop over self.params; rebuilt when set_params rebinds them

    def set_params(self, params: dict) -> None:
        self.params = {k: v.detach().to(self.device, self.dtype).clone() for k, v in params.items()}
        self.loops.clear()

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
        if not (record_states or record_grads):
            self.saved[name] = self._run_static(name, steps, beta, s0)
            return {}
        traj = [s0 or [torch.zeros(self.x.shape[0], d, dtype=self.dtype, device=self.device)
                       for d in self.model.sizes[1:]]]
        s = relax(self.model, self.params, self.x, steps, s0, beta, self.y, on_step=lambda t, s: traj.append(s),
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

    def _run_static(self, name, steps, beta, s0) -> list:
        """The phase's `steps` steps on the (B, beta) StaticLoop, checked for divergence after each chunk of
        CHECK_EVERY steps and at the last (the same schedule as relax's check); returns copies of the states."""
        nudged = self.y is not None and beta != 0
        key = (self.x.shape[0], float(beta) if nudged else 0.0)
        if key not in self.loops:
            def new(d):
                return torch.zeros(self.x.shape[0], d, dtype=self.dtype, device=self.device)
            consts, y = [new(d) for d in self.model.sizes[1:]], new(self.y.shape[1]) if nudged else None
            model, p, b = self.model, dict(self.params), key[1]  # the tensors as bound now, like a graph
            self.loops[key] = (StaticLoop(lambda s: layers_step(model, p, consts, s, b, y),
                                          [new(d) for d in self.model.sizes[1:]], CHECK_EVERY, self.capture),
                               consts, y)
        loop, consts, y = self.loops[key]
        for dst, src in zip(consts, const_drives(self.model, self.params, self.x)):
            dst.copy_(src)
        if y is not None:
            y.copy_(self.y)
        for n, sn in enumerate(loop.state):
            sn.zero_() if s0 is None else sn.copy_(s0[n])
        check = self._check(name, steps)
        for t in loop.chunks(steps):
            check(t, loop.state)
        return [sn.clone() for sn in loop.state]

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
