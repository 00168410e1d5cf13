"""Hamiltonian models from a config, and their sequence data (x (B, T, d_in), y (B, T, d_out) or one-hot classes).

Sizes: `two-mass` [1, 2] (§13 T3: an unused force channel, two masses); `chain`, `chain-logcosh` [1, n] (a force on
the first of n masses); `hru-linear`, `hru-logcosh` [d_in, width, classes]; `hru-stack-linear`,
`hru-stack-logcosh` [d_in, width 1, ..., width L, classes]. The step h is `dt`, the length `T`.

Datasets:
  sinusoid          two-mass: §13 T3's target 0.5 sin 3t at t_n = -T h + n h, no force, one sample
  teacher           two-mass: phi_2 of the same system with k12* = 1.5 (one sample); chain: the last mass of a
                    teacher chain (springs k + U(-0.5, 0.5), seeded by seed + 1) driven by the same forces,
                    u(t) = sum of two sinusoids of seeded frequencies and phases per sample; `batch` training
                    forces and as many test forces
  basic-motions     hru: UEA BasicMotions (4 classes, 6 channels, 100 steps, 40 + 40 samples), read from the data
                    files the `aeon` wheel ships (optional extra `uea`); channels standardised on the training set
  synthetic-motion  hru: a synthetic stand-in (said to be synthetic): class k of 4 drives every channel with a
                    sinusoid of frequency (k + 1) * 0.4 rad per unit time, seeded amplitudes and phases, plus noise
                    (160 training and 80 test sequences)
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from experiments.errors import ConfigError
from nodes.hamiltonian import chain, two_mass

DATASETS = {"two-mass": ("sinusoid", "teacher"), "chain": ("teacher",), "chain-logcosh": ("teacher",),
            "hru-linear": ("synthetic-motion", "basic-motions"), "hru-logcosh": ("synthetic-motion", "basic-motions"),
            "hru-stack-linear": ("synthetic-motion", "basic-motions"),
            "hru-stack-logcosh": ("synthetic-motion", "basic-motions")}
TEACHER_K12 = 1.5


@dataclass
class Sequences:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    synthetic: bool = False


def validate_sequences(cfg, protocol=None) -> None:
    """The Hamiltonian keys: sizes per model, T, eps, the dataset; the protocol's own checks run in config.validate."""
    from protocols import get_protocol
    proto = get_protocol(protocol if protocol is not None else cfg.protocol)
    if not getattr(proto, "models", ()) or cfg.model not in proto.models:
        raise ConfigError("protocol", f"model {cfg.model} is Hamiltonian: it runs under rhel or heb, not {proto.name}")
    if cfg.model == "two-mass":
        ok, form = list(cfg.sizes) == [1, 2], "[1, 2]"
    elif cfg.model.startswith("chain"):
        ok, form = len(cfg.sizes) == 2 and cfg.sizes[0] == 1, "[1, masses]"
    elif cfg.model.startswith("hru-stack"):
        ok, form = len(cfg.sizes) >= 4, "[inputs, width 1, ..., width L (L >= 2), classes]"
    else:
        ok, form = len(cfg.sizes) == 3, "[inputs, width, classes]"
    if not ok:
        raise ConfigError("sizes", f"model {cfg.model} takes sizes {form}, got {cfg.sizes!r}")
    if cfg.T < 1:
        raise ConfigError("T", f"must be >= 1, got {cfg.T}")
    if cfg.dataset not in DATASETS[cfg.model]:
        raise ConfigError("dataset", f"model {cfg.model} learns from {' or '.join(DATASETS[cfg.model])}, not "
                                     f"{cfg.dataset!r}")
    if proto.name == "heb" and cfg.model.startswith("hru"):
        raise ConfigError("protocol", "heb takes a terminal cost on positions; the hru models' loss is ce-mean "
                                      "(use rhel)")
    if cfg.dataset == "basic-motions" and (cfg.sizes[0] != 6 or cfg.sizes[-1] != 4 or cfg.T != 100):
        raise ConfigError("sizes", f"basic-motions has 6 channels, 4 classes and T = 100: sizes [6, ..., 4], "
                                   f"T 100; got sizes {cfg.sizes}, T {cfg.T}")
    if not cfg.dt > 0:
        raise ConfigError("dt", f"must be > 0, got {cfg.dt}")


def forces(n: int, T: int, h: float, seed: int) -> torch.Tensor:
    """(n, T, 1): u(t) = sum of two sinusoids, frequencies U(0.3, 1.5) rad per unit time, phases U(0, 2 pi),
    amplitudes U(0.5, 1), at t = 0, h, ..., (T - 1) h."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) * h
    u = np.zeros((n, T))
    for _ in range(2):
        f, ph, a = rng.uniform(0.3, 1.5, (n, 1)), rng.uniform(0, 2 * math.pi, (n, 1)), rng.uniform(0.5, 1, (n, 1))
        u += a * np.sin(f * t + ph)
    return torch.from_numpy(u[:, :, None])


def teacher_of(cfg):
    """The teacher system: two-mass with k12* = 1.5; a chain with springs k + U(-0.5, 0.5) (seed + 1)."""
    if cfg.model == "two-mass":
        return two_mass(TEACHER_K12, dt=cfg.dt)
    return chain(cfg.sizes[1], dt=cfg.dt, spread=0.5, seed=cfg.seed + 1,
                 potential="logcosh" if cfg.model == "chain-logcosh" else "quadratic")


def _follow(teacher, x, T):
    """The teacher's output positions (B, T, d_out) under forces x."""
    from cluster.truth.echo import System, simulate
    out = System(teacher).out
    _, states = simulate(teacher, teacher.init_params(0), x, None, T, record=True, loss=False)
    return states[1:, :, 0, out].permute(1, 0, 2).contiguous()


def load_sequences(cfg) -> Sequences:
    T, h = cfg.T, cfg.dt
    if cfg.dataset == "sinusoid":
        tn = -T * h + h * torch.arange(1, T + 1, dtype=torch.float64)
        x, y = torch.zeros(1, T, 1, dtype=torch.float64), (0.5 * torch.sin(3 * tn))[None, :, None]
        return Sequences(x, y, x, y, "sinusoid")
    if cfg.dataset == "teacher":
        teacher = teacher_of(cfg)
        if cfg.model == "two-mass":
            x = torch.zeros(1, T, 1, dtype=torch.float64)
            y = _follow(teacher, x, T)
            return Sequences(x, y, x, y, "teacher")
        x = forces(2 * cfg.batch, T, h, cfg.seed)
        y = _follow(teacher, x, T)
        return Sequences(x[:cfg.batch], y[:cfg.batch], x[cfg.batch:], y[cfg.batch:], "teacher")
    if cfg.dataset == "basic-motions":
        return basic_motions()
    return synthetic_motion(cfg.sizes[0], cfg.sizes[-1], T, h, cfg.seed)


def synthetic_motion(d_in: int, classes: int, T: int, h: float, seed: int, n_train: int = 160,
                     n_test: int = 80) -> Sequences:
    """Class k drives every channel with sin((k + 1) 0.4 t + phase) times a seeded channel amplitude, + N(0, 0.3)."""
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.5, 1.5, (classes, d_in))
    t = np.arange(T) * h

    def draw(n):
        k = rng.integers(0, classes, n)
        ph = rng.uniform(0, 2 * math.pi, (n, 1, d_in))
        x = amp[k][:, None, :] * np.sin((k[:, None, None] + 1) * 0.4 * t[None, :, None] + ph)
        x += rng.normal(0, 0.3, x.shape)
        return torch.from_numpy(x), torch.from_numpy(np.eye(classes)[k])
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Sequences(xtr, ytr, xte, yte, "synthetic-motion", synthetic=True)


def _aeon_file(name: str) -> str:
    spec = importlib.util.find_spec("aeon")
    if spec is None:
        raise ConfigError("dataset", "basic-motions is read from the data files of the aeon wheel: pip install "
                                     "'.[uea]' (or use dataset synthetic-motion)")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "BasicMotions", name)


def read_ts(path: str) -> tuple:
    """A UEA .ts file (equal-length, multivariate): (x (n, T, d), labels (n,) as strings, class names)."""
    classes, rows, labels, data = (), [], [], False
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("@classlabel"):
                classes = tuple(line.split()[2:])
            elif line.lower() == "@data":
                data = True
            elif data:
                *dims, label = line.split(":")
                rows.append([[float(v) for v in d.split(",")] for d in dims])
                labels.append(label)
    x = np.asarray(rows).transpose(0, 2, 1)  # (n, d, T) -> (n, T, d)
    return x, labels, classes


def basic_motions() -> Sequences:
    xtr, ltr, classes = read_ts(_aeon_file("BasicMotions_TRAIN.ts"))
    xte, lte, _ = read_ts(_aeon_file("BasicMotions_TEST.ts"))
    mu, sd = xtr.mean((0, 1)), xtr.std((0, 1))
    eye = np.eye(len(classes))

    def onehot(ls):
        return torch.from_numpy(eye[[classes.index(c) for c in ls]])
    return Sequences(torch.from_numpy((xtr - mu) / sd), onehot(ltr), torch.from_numpy((xte - mu) / sd), onehot(lte),
                     "basic-motions")
