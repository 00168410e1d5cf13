"""Centralised reference of the non-conservative estimators on a `vector-field` model (docs/algorithms.md §9, §13 T1).

The field comes from the model declaration alone, each interaction giving its part of the drive u of the groups it
drives over whole groups (Interaction.add_drive, add_jacobian, add_vjp; nodes/dense.py's Dense: W a(src) + b), on
the flat state S (B, n) of the dynamic groups in partition order:
    f_g(S) = -s_g + u_g(a),   a(g) = rho(s_g), or x for an input group;
    J(S) = df/dS = -I + du/dS,   J^T d = -d + (du/dS)^T d   (no autograd; Dense: du_dst/ds_src = W diag(rho'(s_src))).
Every relaxation is explicit Euler, S <- S + dt * (field), the nodes' own step (tests check it against `relax`).
With delta the estimator's state displacement over beta, every estimate is g = -(d_theta f(S*))^T delta (batch mean),
the §9 formula with d_theta C = 0:
    vf:             delta = (S^beta - S0) / beta,        dS/dt = f - beta dC/dS                  (biased: J^-1, not J^-T)
    aep:            delta = (S^beta - S0) / beta,        dS/dt = f - beta dC/dS - 2A (S - S0),  A = (J - J^T)/2 at S0
    aep-symmetric:  delta = (S^+b - S^-b) / (2 beta),    the same with -+beta, both from S0
    dyadic:         delta = d / beta,   dm/dt = f(m),  dd/dt = J(m)^T d - beta dC/dm,  m(0) = S0, d(0) = 0
    implicit:       delta = lambda,     J(S0)^T lambda = dC/dS(S0)                                 (the truth)
This is what the fabric protocols are checked against: no node here, the whole state in one tensor.
"""
from __future__ import annotations

import torch

from nodes.activations import ACTIVATIONS

METHODS = ("vf", "aep", "aep-symmetric", "dyadic", "implicit")


class Field:
    """f, J and J^T d of a `vector-field` model at fixed parameters and input."""

    def __init__(self, model, params: dict, x):
        if model.physics != "vector-field":
            raise ValueError(f"model {model.name}: the non-conservative reference needs physics 'vector-field', "
                             f"got {model.physics!r}")
        self.model, self.params, self.x = model, params, x
        self.rho, self.rho_prime = ACTIVATIONS[model.activation]
        self.dt = model.dt
        at, self.span = 0, {}
        for g in model.dynamic_groups:
            self.span[g.name] = (at, at + g.size)
            at += g.size
        self.n, self.out = at, self.span[model.output_group.name]

    def _parts(self, S):
        return {g: S[:, lo:hi] for g, (lo, hi) in self.span.items()}

    def __call__(self, S, params=None):
        """f(S); `params` (default: the field's own) may be leaves to differentiate."""
        p = self.params if params is None else params
        s = self._parts(S)
        f = {g: -v for g, v in s.items()}
        a = {g.name: self.x for g in self.model.groups if g.role == "input"}
        a.update({g: self.rho(v) for g, v in s.items()})
        for it in self.model.interactions:
            it.add_drive(self.model, f, p, a)
        return torch.cat([f[g] for g in self.span], 1)

    def jacobian(self, S):
        """J(S), (B, n, n): J[b, i, j] = df_i/dS_j."""
        B = S.shape[0]
        J = -torch.eye(self.n, dtype=S.dtype, device=S.device).repeat(B, 1, 1)
        da = {g: self.rho_prime(v) for g, v in self._parts(S).items()}
        for it in self.model.interactions:
            it.add_jacobian(self.model, J, self.params, da, self.span)
        return J

    def jt(self, S, d):
        """J(S)^T d, (B, n): what each unit gathers from the units it drives (Dense: d_dst through W^T)."""
        dd = self._parts(d)
        da = {g: self.rho_prime(v) for g, v in self._parts(S).items()}
        out = {g: -v for g, v in dd.items()}
        for it in self.model.interactions:
            it.add_vjp(self.model, out, self.params, da, dd)
        return torch.cat([out[g] for g in self.span], 1)

    def cost_grad(self, S, y):
        """dC/dS per sample, C = 1/2 ||s_out - y||^2 (the batch mean's 1/B is in the estimators' mean)."""
        g = torch.zeros_like(S)
        g[:, self.out[0]:self.out[1]] = S[:, self.out[0]:self.out[1]] - y
        return g

    def relax(self, S, steps: int, drive=None):
        """`steps` Euler steps S <- S + dt (f(S) + drive(S))."""
        for _ in range(steps):
            v = self(S)
            S = S + self.dt * (v if drive is None else v + drive(S))
        return S

    def pullback(self, S, delta) -> dict:
        """-(d_theta f(S))^T delta, batch mean: the estimate of dL/dtheta for the displacement delta."""
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        with torch.enable_grad():
            f = self(S.detach(), leaves)
            gs = torch.autograd.grad(-(f * delta.detach()).sum() / S.shape[0], list(leaves.values()),
                                     allow_unused=True)
        return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, gs)}


def free_state(field: Field, steps: int):
    return field.relax(torch.zeros(field.x.shape[0], field.n, dtype=field.x.dtype, device=field.x.device), steps)


def estimate(method: str, model, params: dict, x, y, beta: float, T1: int, T2: int, S0=None) -> dict:
    """The gradient estimate of `method` (METHODS) after T1 free and T2 learning steps per relaxation; returns
    {"grad": {param: tensor}, "free": S0, "residual": max |f| at the final state(s) of the learning phase(s)}."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    F = Field(model, params, x)
    with torch.no_grad():
        S0 = free_state(F, T1) if S0 is None else S0
        if method == "implicit":
            lam = torch.linalg.solve(F.jacobian(S0).transpose(1, 2), F.cost_grad(S0, y).unsqueeze(-1)).squeeze(-1)
            return {"grad": F.pullback(S0, lam), "free": S0, "residual": float(F(S0).abs().max())}
        if method == "dyadic":
            m, d = S0, torch.zeros_like(S0)
            for _ in range(T2):
                m, d = m + F.dt * F(m), d + F.dt * (F.jt(m, d) - beta * F.cost_grad(m, y))
            res = max(float(F(m).abs().max()), float((F.jt(m, d) - beta * F.cost_grad(m, y)).abs().max()))
            return {"grad": F.pullback(m, d / beta), "free": S0, "residual": res}
        anchor = None
        if method.startswith("aep"):
            J = F.jacobian(S0)
            two_a = J - J.transpose(1, 2)

            def anchored(S):
                return -torch.bmm(two_a, (S - S0).unsqueeze(-1)).squeeze(-1)
            anchor = anchored

        def nudged(b):
            def drive(S):
                v = -b * F.cost_grad(S, y)
                return v if anchor is None else v + anchor(S)
            S = F.relax(S0, T2, drive)
            return S, float((F(S) + drive(S)).abs().max())

        if method == "aep-symmetric":
            (Sp, rp), (Sm, rm) = nudged(beta), nudged(-beta)
            return {"grad": F.pullback(S0, (Sp - Sm) / (2 * beta)), "free": S0, "residual": max(rp, rm)}
        Sb, r = nudged(beta)
        return {"grad": F.pullback(S0, (Sb - S0) / beta), "free": S0, "residual": r}


def t1_toy():
    """docs/algorithms.md §13 T1: 12 units (the last 3 the output), 5 inputs, f = -s + W tanh(s) + U x + b, dt 0.05; W
    ~ N(0,1) 0.35/sqrt(12), U ~ N(0,1) 0.8, b ~ N(0,1) 0.1, x ~ N(0,1), y ~ N(0,1) 0.5, drawn from NumPy
    default_rng(1) in the order W, U, b, x, y (§13's order: it reproduces §13's digits; x first does not).
    Returns (model, params, x (1, 5), y (1, 3)); W is split into the model's blocks W_{dst}{src} of groups S (units
    0..8) and Y (9..11)."""
    import numpy as np

    from nodes.layered import directed_graph

    rng = np.random.default_rng(1)
    W = torch.tensor(rng.standard_normal((12, 12)) * 0.35 / np.sqrt(12))
    U = torch.tensor(rng.standard_normal((12, 5)) * 0.8)
    b = torch.tensor(rng.standard_normal(12) * 0.1)
    x = torch.tensor(rng.standard_normal(5))[None]
    y = torch.tensor(rng.standard_normal(3) * 0.5)[None]
    h = slice(0, 9), slice(9, 12)
    params = {"W_SS": W[h[0], h[0]], "W_YS": W[h[1], h[0]], "W_SY": W[h[0], h[1]], "W_YY": W[h[1], h[1]],
              "U_S": U[h[0]], "b_S": b[h[0]], "U_Y": U[h[1]], "b_Y": b[h[1]]}
    model = directed_graph(12, 5, 3, activation="tanh", dt=0.05, physics="vector-field", name="vector-graph")
    return model, {k: v.contiguous() for k, v in params.items()}, x, y
