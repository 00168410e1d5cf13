"""Hamiltonian models train through the one training loop: host actors killed during a run on a fabric, and a run
resumed from its checkpoint, end with the float64 parameters, lineages and metrics of an uninterrupted run."""
import json
import os
import signal
import threading

import pytest
import torch

from experiments.config import load_config
from experiments.train import run_train

CHAIN = ["sizes=[1,4]", "T=30", "batch=2", "epochs=4", "fabric.hosts=2", "granularity=neuron", "dtype=float64",
         "bptt_baseline=true"]  # one batch per epoch (the teacher's forces are the batch)
HRU = ["sizes=[2,3,2]", "dataset=synthetic-motion", "T=8", "batch=40", "epochs=2", "checkpoint_every=2",
       "fabric.hosts=2", "dtype=float64"]  # 4 batches per epoch, a checkpoint after the second


class EpochKiller:
    """Kills a host actor before the batches at `plan` [(epoch, batch), ...]: by ray.kill, or every second one by
    SIGKILL of the actor's process a few milliseconds into the batch. One kill per fabric."""

    def __init__(self, plan):
        self.plan, self.at, self.last, self.timers = list(plan), [], None, []

    def __call__(self, engine, epoch, b):
        import ray
        if not self.plan or (epoch, b) < self.plan[0] or engine.fabric is self.last:
            return
        self.plan.pop(0)
        self.last = engine.fabric
        host = sorted(engine.fabric.hosts)[len(self.at) % len(engine.fabric.hosts)]
        actor = engine.fabric.hosts[host]
        self.at.append((epoch, b, host))
        if len(self.at) % 2:
            ray.kill(actor)
            return
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
        t = threading.Timer(0.005, os.kill, (pid, signal.SIGKILL))
        t.start()
        self.timers.append(t)


def _rows(metrics: dict) -> list:
    """The metrics rows without their wall times."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in metrics["epochs"]]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("config,sets,plan,back,n_batches", [
    # the first kill comes before any checkpoint: back to the start, where row 0 is evaluated again
    ("chain", CHAIN, [(0, 0), (2, 0)], [[0, 0], [2, 0]], 4),
    # back to the start (batch 0 replayed), then to the mid-epoch checkpoint (batch 2 replayed)
    ("hru-sequence", HRU, [(0, 1), (0, 3)], [[0, 0], [0, 2]], 8),
])
def test_killed_host_actors_leave_a_hamiltonian_run_bit_identical(config, sets, plan, back, n_batches, tmp_path,
                                                                  ray_session):
    cfg = load_config(config, sets)
    full = run_train(cfg, str(tmp_path / "full"), progress=False)
    killer = EpochKiller(plan)
    faulty = run_train(cfg, str(tmp_path / "faulty"), progress=False, on_batch=killer)
    assert len(killer.at) == len(plan) and not killer.plan
    for k, v in full["final_params"].items():
        assert torch.equal(faulty["final_params"][k], v), k
    # every batch exactly once in every node's lineage, with the uninterrupted run's update hashes
    assert all([r[0] for r in rows] == list(range(n_batches)) for rows in faulty["lineage"].values())
    assert faulty["lineage"] == full["lineage"]
    m = json.loads((tmp_path / "faulty" / "metrics.json").read_text())
    assert m["faults"] == len(plan) and [f["rolled_back_to"] for f in m["fault_log"]] == back
    # a SIGKILL may be found after its batch (in the epoch's evaluation): then the whole epoch's batches count
    assert m["replayed_batches"] == sum(f["replayed"] for f in m["fault_log"]) >= sum(
        b - bb for (_, b), (_, bb) in zip(plan, back))
    assert _rows(m) == _rows(json.loads((tmp_path / "full" / "metrics.json").read_text()))
    assert m["final_params"] == {k: v.tolist() for k, v in full["final_params"].items()}
    for f in ("lineage.json", "locality.json", "checkpoint.npz", "metrics.csv", "loss.png"):
        assert (tmp_path / "faulty" / f).stat().st_size > 0, f
    assert m["locality"]["violations"] == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_resumed_hamiltonian_run_ends_with_the_uninterrupted_parameters(tmp_path):
    sets = [s for s in CHAIN if not s.startswith("fabric")] + ["engine=reference"]
    full = run_train(load_config("chain", sets), str(tmp_path / "full"), progress=False)
    part = tmp_path / "part"
    run_train(load_config("chain", sets + ["epochs=2"]), str(part), progress=False)
    resumed = run_train(load_config(str(part / "config.yaml"), ["epochs=4"]), str(part), progress=False, resume=True)
    for k, v in full["final_params"].items():
        assert torch.equal(resumed["final_params"][k], v), k
    assert resumed["lineage"] == full["lineage"]
    assert _rows(resumed) == _rows(full) and [r["epoch"] for r in resumed["epochs"]] == list(range(5))
    assert resumed["bptt_final_params"] == full["bptt_final_params"]
