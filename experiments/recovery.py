"""Rollback and replay (docs/guide/reliability.md): a run survives the death of host actors.

Every `checkpoint_every` batches and at every epoch's end the coordinator takes a consistent checkpoint (between
batches, so every node is at the same batch; each node packs its own state) and writes it atomically, in the
`--resume` format. When a host dies (Ray reports the actor dead: cluster/fabric.HostLost), the whole fabric is torn
down, a new one is built (new actors, endpoints and credentials), each node is sent its own state from the last
checkpoint, and the batches since then are replayed in their seeded order (the family's plan,
experiments/hooks.py). No update is lost or applied twice: the result is bit-identical to an uninterrupted run,
which the nodes' lineages (batch serial, hash of the update; cluster/nodeset.update_hash) show batch by batch.
"""
from __future__ import annotations

import sys
import time

from cluster.runtime.fabric import HostLost
from experiments import checkpoint
from experiments.checkpoint import Snapshot


class Rollback:
    def __init__(self, build, params: dict, out_dir: str, every: int, max_faults: int, baseline=None,
                 last: Snapshot | None = None, record: dict | None = None):
        """build() -> a new engine; params: the run's initial parameters (set before any checkpoint is restored);
        last: the checkpoint to start from (a resumed run's), else the start; record: the faults so far."""
        self.build, self.params, self.out_dir = build, params, out_dir
        self.every, self.max_faults, self.baseline = int(every), int(max_faults), baseline
        self.last = last or Snapshot()
        self.record = {"faults": [], "replayed_batches": 0, **(record or {})}

    def engine(self):
        """A new engine at the last checkpoint."""
        engine = self.build()
        try:
            engine.set_params(self.params)
            if self.last.nodes:
                self.last.restore(engine, self.baseline)
        except BaseException:
            engine.close()
            raise
        return engine

    def due(self, batch: int, n_batches: int) -> bool:
        return self.every > 0 and batch % self.every == 0 and batch < n_batches

    def checkpoint(self, engine, epoch: int, batch: int, tally: dict, metrics: dict) -> None:
        self.last = Snapshot.take(epoch, batch, tally, metrics, engine, self.baseline)
        checkpoint.save(self.out_dir, self.last, self.record)

    def recover(self, engine, err, epoch: int, batch: int, n_batches: int):
        """After `err` (a HostLost at batch `batch` of epoch `epoch`): a new engine at the last checkpoint, or the
        error again once more than max_faults faults have happened (a host lost while rebuilding counts too)."""
        t0 = time.perf_counter()
        replayed = (epoch - self.last.epoch) * n_batches + batch - self.last.batch
        engine.close()
        while True:
            self.record["faults"].append({"epoch": epoch, "batch": batch, "host": err.host, "error": str(err),
                                          "rolled_back_to": [self.last.epoch, self.last.batch], "replayed": replayed})
            if len(self.record["faults"]) > self.max_faults:
                raise type(err)(f"{err} (fault {len(self.record['faults'])}, more than max_faults = "
                                f"{self.max_faults})", err.host) from None
            self.record["replayed_batches"] += replayed
            try:
                new = self.engine()
                break
            except HostLost as again:  # lost while rebuilding: nothing ran since the checkpoint
                err, replayed = again, 0
        self.record["faults"][-1]["recovery_seconds"] = time.perf_counter() - t0
        print(f"fault: {err}; fabric rebuilt at epoch {self.last.epoch + 1}, batch {self.last.batch} "
              f"({replayed} batches to replay, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return new

    def summary(self) -> dict:
        return {"faults": len(self.record["faults"]), "replayed_batches": self.record["replayed_batches"],
                "fault_log": list(self.record["faults"])}
