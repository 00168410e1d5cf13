"""Ground truth by implicit differentiation at the free stationary state (docs/algorithms.md §9, §12.1 "RBP").

The nodes' free dynamics is a step map s_{t+1} = Phi(s_t; theta) (`relax` one step: the very arithmetic the nodes
run). At its fixed point s* = Phi(s*):
    (I - dPhi/ds)^T lambda = dC/ds(s*),      dC/dtheta = lambda^T dPhi/dtheta,
which for an Euler step Phi = s + dt f is §9's J^T mu = dC/ds, dC/dtheta = -(d_theta f)^T mu with J = df/ds,
mu = -lambda / dt. It holds for any model whose free phase settles (energy, prototypical, vector-field), so where the
free phase has converged it equals BPTT through T1 steps; a gap flags a convergence problem. Phi is separable over
the batch, so each sample's Jacobian comes from n vector-Jacobian products for the whole batch (n = units per
sample) and a dense n x n solve per sample.
"""
from __future__ import annotations

import torch

from cluster.inprocess import relax
from nodes.dynamics import cost

EULER = ("energy", "vector-field")  # physics whose step is s + dt f(s): the field's Jacobian is (dPhi/ds - I) / dt


def implicit_grad(model, params: dict, x, y, T1: int) -> tuple:
    """(dC/dtheta at the fixed point reached by T1 free steps, diagnostics): `residual` max |Phi(s) - s| there,
    `radius`, the largest spectral radius of dPhi/ds over the samples (>= 1: the fixed point is not stable), and for
    Euler physics the field Jacobian's `antisymmetry` and `abscissa` (field_jacobian_report)."""
    with torch.no_grad():
        free = relax(model, params, x, T1)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        s = [v.detach().clone().requires_grad_(True) for v in free]
        out = relax(model, leaves, x, 1, s=s)
        S, O = torch.cat(s, 1), torch.cat(out, 1)
        n = S.shape[1]
        rows = []
        for i in range(n):  # row i of every sample's Jacobian dO_b/dS_b at once
            rows.append(torch.cat(torch.autograd.grad(O[:, i].sum(), s, retain_graph=True), 1))
        J = torch.stack(rows, 1)  # (B, n, n): J[b, i, j] = dO_bi / dS_bj
        gC = torch.cat([torch.zeros_like(v) for v in s[:-1]] +
                       [torch.autograd.grad(cost(s[-1], y), s[-1], retain_graph=True)[0]], 1)
        eye = torch.eye(n, dtype=J.dtype, device=J.device).expand_as(J)
        lam = torch.linalg.solve((eye - J).transpose(1, 2), gC.unsqueeze(-1)).squeeze(-1)
        grads = torch.autograd.grad(O, list(leaves.values()), grad_outputs=lam, allow_unused=True)
    g = {k: (v.detach() if v is not None else torch.zeros_like(leaves[k])) for k, v in zip(leaves, grads)}
    residual = float((O - S).detach().abs().max()) if O.numel() else 0.0
    radius = float(torch.linalg.eigvals(J.detach()).abs().max()) if n else 0.0
    report = field_jacobian_report((J.detach() - eye) / model.dt) if model.physics in EULER and n else {}
    return g, {"residual": residual, "radius": radius, **report}


def field_jacobian_report(J) -> dict:
    """Of a field's Jacobian J = df/ds (B, n, n) at the free state, over the samples: `antisymmetry`
    max ||J - J^T|| / ||J|| (Frobenius; 0 to rounding for a gradient field such as `energy`, where AEP's anchor term
    -2A(x - x0) vanishes) and `abscissa` max Re eig(J) (< 0: the free state is stable for the continuous dynamics,
    and J^T, AEP's and Dyadic's learning-phase Jacobian, is as stable). For an Euler physics J = (dPhi/ds - I)/dt."""
    asym = torch.linalg.matrix_norm(J - J.transpose(1, 2)) / torch.linalg.matrix_norm(J)
    return {"antisymmetry": float(asym.max()), "abscissa": float(torch.linalg.eigvals(J).real.max())}
