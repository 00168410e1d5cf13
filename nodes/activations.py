"""Activation functions rho and their derivatives (docs/algorithms.md §1, "Activations").

Each entry is (rho, rho_prime). Names are the config values of `activation`.
"""
from __future__ import annotations

import torch


def _sigmoid(x):
    return torch.sigmoid(x)


def _sigmoid_prime(x):
    s = torch.sigmoid(x)
    return s * (1 - s)


def _sigmoid4(x):
    """sigmoid4(x) = 1 / (1 + exp(-4 (x - 1/2)))."""
    return torch.sigmoid(4 * (x - 0.5))


def _sigmoid4_prime(x):
    s = torch.sigmoid(4 * (x - 0.5))
    return 4 * s * (1 - s)


def _tanh_prime(x):
    t = torch.tanh(x)
    return 1 - t * t


def _hardsigmoid(x):
    """clip(x, 0, 1)."""
    return torch.clamp(x, 0.0, 1.0)


def _hardsigmoid_prime(x):
    """1 on the closed interval [0, 1], 0 outside (the torch.clamp autograd convention, §1)."""
    return ((x >= 0) & (x <= 1)).to(x.dtype)


ACTIVATIONS = {
    "tanh": (torch.tanh, _tanh_prime),
    "sigmoid": (_sigmoid, _sigmoid_prime),
    "sigmoid4": (_sigmoid4, _sigmoid4_prime),
    "hardsigmoid": (_hardsigmoid, _hardsigmoid_prime),
}
HOLOMORPHIC = ("tanh", "sigmoid", "sigmoid4")

# rho(z) = g(scale z + shift) with g applied in place: the prototypical step folds scale and shift into its
# matrix products (nodes/dynamics.py), so sigmoid4 costs one sigmoid pass, not three.
PREACTIVATION = {
    "tanh": (1.0, 0.0, torch.tanh_),
    "sigmoid": (1.0, 0.0, torch.sigmoid_),
    "sigmoid4": (4.0, -2.0, torch.sigmoid_),
    "hardsigmoid": (1.0, 0.0, lambda z: torch.clamp(z, 0.0, 1.0)),  # clamp's backward needs its input
}

# rho'(h) written through s = rho(h) (the GDU audit's neuron relation, nodes/dynamics.Prototypical); for hardsigmoid a
# state at 0 or 1 counts as saturated (h outside [0, 1] almost surely).
RHO_PRIME_OF_OUTPUT = {
    "tanh": lambda s: 1 - s * s,
    "sigmoid": lambda s: s * (1 - s),
    "sigmoid4": lambda s: 4 * s * (1 - s),
    "hardsigmoid": lambda s: ((s > 0) & (s < 1)).to(s.dtype),
}
