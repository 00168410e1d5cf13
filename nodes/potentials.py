"""The pieces of a Hamiltonian model's potential and loss that its nodes and the centralised leapfrog share
(nodes/hamiltonian.py declares the models, nodes/leapfrog.py is their nodes' rule, cluster/truth/echo.py the
centralised reference): the onsite potentials' forces and parameter gradients, the losses with their cotangents, and
the readouts. Equations: nodes/hamiltonian.py's docstring and docs/algorithms.md §10."""
from __future__ import annotations

import math

import torch

READOUTS = {"sin-readout": ("c",), "ce-mean": ("C", "d")}


def logcosh(z):
    """log cosh z without overflow: |z| + log1p(exp(-2|z|)) - log 2."""
    a = z.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def onsite_force(kind: str, phi, d, p: dict):
    """-dV_onsite/dphi: quadratic -a phi + d; logcosh -a phi - c tanh(w phi + d)."""
    f = -p["a"] * phi if "a" in p else torch.zeros_like(phi)
    if kind == "quadratic":
        return f + d if d is not None else f
    z = p["w"] * phi + (d if d is not None else 0.0)
    return f - p["c"] * torch.tanh(z)


def onsite_grads(kind: str, phi, d, p: dict) -> tuple:
    """({role: dV/dtheta per sample and unit} for the onsite parameters, dV/dd per sample and unit)."""
    g = {"a": 0.5 * phi * phi}
    if kind == "quadratic":
        return g, -phi
    z = p["w"] * phi + (d if d is not None else 0.0)
    th, lc = torch.tanh(z), logcosh(z)
    g["w"] = p["c"] * (th * phi / p["w"] - lc / (p["w"] * p["w"]))
    g["c"] = lc / p["w"]
    return g, p["c"] * th / p["w"]


def loss_and_cotangent(loss: str, phi, y, weight: float, readout: dict, cotangent: bool = True) -> tuple:
    """(l per sample, dl/dphi or None without `cotangent`) of one step's loss at positions phi (B, w) against y (B, w)
    (None for sin-sum); weight multiplies both (h for sq on a trajectory, 1 for a terminal cost)."""
    if loss == "sq":
        r = phi - y
        return weight * (r * r).sum(1), (2 * weight) * r if cotangent else None
    if loss == "sin-sum":
        s = torch.sin(phi).sum(1, keepdim=True)
        return weight * (s * s)[:, 0], (2 * weight) * s * torch.cos(phi) if cotangent else None
    if loss == "sin-readout":
        c = readout["c"][0]
        z = phi @ c
        return weight * torch.sin(z) ** 2, weight * torch.sin(2 * z)[:, None] * c if cotangent else None
    raise ValueError(f"loss: {loss!r} has no per-step cotangent")


def readout_step_grads(loss: str, phi, weight: float, readout: dict) -> dict:
    """d l_n / d(readout) per sample for the per-step losses with a readout (sin-readout: d sin^2(c.phi)/dc)."""
    if loss == "sin-readout":
        z = phi @ readout["c"][0]
        return {"c": weight * torch.sin(2 * z)[:, None, None] * phi[:, None, :]}
    return {}


def ce_mean(mean_phi, y, readout: dict) -> tuple:
    """ce-mean on the time-mean m: (loss per sample, logits, dl/dm, {C: dl/dC, d: dl/dd} per sample)."""
    logits = mean_phi @ readout["C"].T + readout["d"]
    p = torch.softmax(logits, 1)
    loss = -(torch.log_softmax(logits, 1) * y).sum(1)
    r = p - y
    return loss, logits, r @ readout["C"], {"C": r[:, :, None] * mean_phi[:, None, :], "d": r}
