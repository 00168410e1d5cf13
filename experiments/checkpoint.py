"""Checkpoints: every node's state (held tensors, optimiser state, lineage), the run's position (epochs done, batches
of the next epoch done, that epoch's running sums), the metrics so far, and the recovery record.

Written atomically (temporary file, then rename) so a crash never leaves a half-written checkpoint. A checkpoint
is taken between batches, when every node is at the same batch (a consistent cut). The data order and random signs
of epoch e are a pure function of (seed, e) (the family's plan, experiments/hooks.py), so a run's position is all the
RNG state there is, and resuming or replaying from a checkpoint is exact.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

FILE = "checkpoint.npz"


@dataclass
class Snapshot:
    epoch: int = 0                                # epochs completed
    batch: int = 0                                # batches of epoch `epoch` completed
    tally: dict = field(default_factory=dict)     # that epoch's running sums (correct, loss, seen, ...)
    metrics: dict = field(default_factory=lambda: {"epochs": [], "baseline": []})
    nodes: dict = field(default_factory=dict)     # {node: packed state}
    baseline: dict = field(default_factory=dict)  # the BPTT baseline's packed state

    @classmethod
    def take(cls, epoch: int, batch: int, tally: dict, metrics: dict, engine, baseline=None) -> "Snapshot":
        """The run now: every node's own state gathered from the engine (a control call per host)."""
        return cls(epoch, batch, dict(tally), copy.deepcopy(metrics), engine.get_state(),
                   baseline.get_state() if baseline is not None else {})

    def restore(self, engine, baseline=None) -> None:
        """Each node its own state back (the coordinator routes by node id); the baseline's too."""
        if set(self.nodes) != set(engine.specs):
            from experiments.config import ConfigError
            raise ConfigError("--resume", f"the checkpoint holds nodes {sorted(self.nodes)[:4]}..., this run's "
                                          f"partition has {sorted(engine.specs)[:4]}... (resume with the run's "
                                          f"granularity and split)")
        engine.set_state(self.nodes)
        if baseline is not None and self.baseline:
            baseline.set_state(self.baseline)


def save(out_dir: str, snap: Snapshot, recovery: dict | None = None) -> None:
    arrays = {f"node/{k}": np.frombuffer(v, dtype=np.uint8) for k, v in snap.nodes.items()}
    arrays.update({f"baseline/{k}": np.frombuffer(v, dtype=np.uint8) for k, v in snap.baseline.items()})
    arrays["info"] = np.array(json.dumps({"epoch": snap.epoch, "batch": snap.batch, "tally": snap.tally,
                                          "metrics": snap.metrics, "recovery": recovery or {}}))
    tmp = os.path.join(out_dir, FILE + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(out_dir, FILE))


def load(out_dir: str) -> tuple:
    """(Snapshot, recovery record) from DIR/checkpoint.npz."""
    path = os.path.join(out_dir, FILE)
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        nodes = {k[5:]: z[k].tobytes() for k in z.files if k.startswith("node/")}
        base = {k[9:]: z[k].tobytes() for k in z.files if k.startswith("baseline/")}
    snap = Snapshot(info["epoch"], info.get("batch", 0), info.get("tally", {}), info["metrics"], nodes, base)
    return snap, info.get("recovery", {})


def params_of(engine) -> dict:
    return {k: v.to(torch.float64) for k, v in engine.get_params().items()}
