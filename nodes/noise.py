"""Counter-based Gaussian noise on the pre-activations (config `noise`; docs/algorithms.md §7, noisy_fwd).

At every step t of a phase each unit's pre-activation h gets xi * noise, xi ~ N(0, 1), before the activation
(energy: the drive u = h; prototypical: u = k h + c, so u gains k xi noise). xi is a pure function of

    (seed, draw, run, t, sample b, unit u)

draw = the batch's serial in the run (the coordinator's clock; None: no noise, as in inference), run = the phase's
name (free, plus, k3, osc, ...), u = the unit's index among all dynamic units of the model. No generator state is
carried, so every partition (layer, neuron, split, hosted), the in-process engine and BPTT draw the very same values,
and a resumed run draws what an uninterrupted one would. Each key is hashed with splitmix64 (Steele, Lea & Flood
2014), two 53-bit uniforms per element, one normal by Box-Muller.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

_M = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z):
    """splitmix64's finaliser on uint64 arrays (wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _key(*parts: int) -> np.ndarray:
    h = np.array([_GOLDEN], dtype=np.uint64)
    for p in parts:
        h = _mix(h ^ np.uint64(int(p) & _M))
    return h


def run_key(name: str) -> int:
    return zlib.crc32(name.encode())


def normals(seed: int, draw: int, run: str, t0: int, steps: int, batch: int, lo: int, hi: int) -> np.ndarray:
    """xi of shape (steps, batch, hi - lo): steps t0 .. t0+steps-1, samples 0..batch-1, units lo..hi-1."""
    with np.errstate(over="ignore"):
        k = _key(seed, draw, run_key(run))
        t = np.arange(t0, t0 + steps, dtype=np.uint64)[:, None, None]
        b = np.arange(batch, dtype=np.uint64)[None, :, None]
        u = np.arange(lo, hi, dtype=np.uint64)[None, None, :]
        h = _mix(_mix(_mix(k ^ (t * np.uint64(_GOLDEN))) ^ (b * np.uint64(0xD1B54A32D192ED03)))
                 ^ (u * np.uint64(0x8CB92BA72F3D8DD7)))
        h2 = _mix(h ^ np.uint64(0xA0761D6478BD642F))
    u1 = ((h >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53    # (0, 1]
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53           # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def noise_block(std: float, seed: int, draw, run: str, steps: int, batch: int, lo: int, hi: int, dtype, device,
                t0: int = 0):
    """std * xi for a node's units [lo, hi) over a phase, as a (steps, batch, hi - lo) tensor; None when there is
    no noise (std 0 or draw None)."""
    if not std or draw is None or steps <= 0:
        return None
    xi = normals(seed, draw, run, t0, steps, batch, lo, hi)
    return torch.from_numpy(xi * float(std)).to(device=device, dtype=dtype)
