"""Checkpoints: engine state (held tensors and optimiser state, per logical node), epoch, metrics so far.

Written atomically (temporary file, then rename) so a crash never leaves a half-written checkpoint. The
data order and random signs of epoch e come from `default_rng([seed, e])`, so the RNG state of a resumed
run is the pair (seed, epoch) and resuming is exact.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

FILE = "checkpoint.npz"


def engine_state(engine) -> dict:
    """{key: bytes}: one packed entry per logical node (its held tensors and optimiser state), on either engine."""
    return {f"node/{k}": v for k, v in engine.get_state().items()}


def set_engine_state(engine, state: dict) -> None:
    nodes = {k[5:]: v for k, v in state.items() if k.startswith("node/")}
    if set(nodes) != set(engine.specs):
        from experiments.config import ConfigError
        raise ConfigError("--resume", f"the checkpoint holds nodes {sorted(nodes)[:4]}..., this run's partition has "
                                      f"{sorted(engine.specs)[:4]}... (resume with the run's granularity and split)")
    engine.set_state(nodes)


def save(out_dir: str, epoch: int, engine, metrics: dict, baseline=None) -> None:
    arrays = {k: np.frombuffer(v, dtype=np.uint8) for k, v in engine_state(engine).items()}
    if baseline is not None:
        arrays.update({f"baseline/{k}": np.frombuffer(v, dtype=np.uint8)
                       for k, v in baseline.get_state().items()})
    arrays["info"] = np.array(json.dumps({"epoch": epoch, "metrics": metrics}))
    tmp = os.path.join(out_dir, FILE + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(out_dir, FILE))


def load(out_dir: str):
    """(epoch, metrics, engine state, baseline state) from DIR/checkpoint.npz."""
    path = os.path.join(out_dir, FILE)
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        state = {k: z[k].tobytes() for k in z.files if k != "info" and not k.startswith("baseline/")}
        base = {k[9:]: z[k].tobytes() for k in z.files if k.startswith("baseline/")}
    return info["epoch"], info["metrics"], state, base


def params_of(engine) -> dict:
    return {k: v.to(torch.float64) for k, v in engine.get_params().items()}
