"""Rollback and replay: host actors killed at random batches (by Ray, or their process killed mid-batch), and a
killed driver resumed, end with the float64 weights and lineages of an uninterrupted run, bit for bit."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from experiments.config import load_config
from experiments.train import run_train
from tests.conftest import ROOT, run_cli

SMALL = ["sizes=[64,16,10]", "epochs=1", "T1=10", "T2=4", "batch=64", "dtype=float64", "checkpoint_every=4",
         "fabric.hosts=2"]


class Killer:
    """Kills `n` host actors at random batches at least two apart (none in the last three): half by ray.kill before
    the batch, half by SIGKILL of the actor's process a few milliseconds into it. A kill waits until the fabric of
    the previous one has been rebuilt (a SIGKILL that lands after its batch is found at a later one), so each kill
    is one fault."""

    def __init__(self, n: int, n_batches: int, seed: int):
        self.rng = random.Random(seed)
        self.plan = [v + k for k, v in enumerate(sorted(self.rng.sample(range(1, n_batches - n - 1), n)))]
        self.at = {}  # batch -> host killed there
        self.threads, self.dirs, self.last = [], [], None  # the killed hosts' private ipc directories

    def __call__(self, engine, epoch, b):
        import ray
        if not self.plan or b < self.plan[0] or engine.fabric is self.last:
            return
        self.plan.pop(0)
        self.last = engine.fabric
        host = self.rng.choice(sorted(engine.fabric.hosts))
        actor = engine.fabric.hosts[host]
        self.at[b] = host
        self.dirs.append(os.path.dirname(engine.fabric.addresses[host][len("ipc://"):]))
        if len(self.threads) % 2 == 0:
            ray.kill(actor)
            self.threads.append(None)
            return
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
        t = threading.Timer(self.rng.uniform(0.0, 0.02), os.kill, (pid, signal.SIGKILL))
        t.start()
        self.threads.append(t)


def batch_serials(lineage: dict) -> dict:
    return {node: [r[0] for r in rows] for node, rows in lineage.items()}


@pytest.mark.slow
@pytest.mark.parametrize("granularity, kills", [("layer", 10), ("neuron", 4)])
def test_ten_killed_actors_leave_the_weights_bit_identical(granularity, kills, tmp_path, ray_session):
    """Ten kills on the layer partition; four (two of each kind) where each host runs many neuron nodes, which
    recover by the same rollback (the kill count is what costs: each restarts an actor)."""
    cfg = load_config("train", SMALL + [f"granularity={granularity}"])
    full = run_train(cfg, str(tmp_path / "full"), progress=False)
    n_batches = len(next(iter(full["lineage"].values())))
    killer = Killer(kills, n_batches, seed=7)
    faulty = run_train(cfg, str(tmp_path / "faulty"), progress=False, on_batch=killer)
    assert len(killer.at) == kills and not killer.plan
    for k, v in full["final_params"].items():
        assert torch.equal(faulty["final_params"][k], v), k
    # every batch exactly once in every node's lineage, with the uninterrupted run's update hashes
    assert all(s == list(range(n_batches)) for s in batch_serials(faulty["lineage"]).values())
    assert faulty["lineage"] == full["lineage"]
    m = json.loads((tmp_path / "faulty" / "metrics.json").read_text())
    assert m["faults"] == kills and m["replayed_batches"] == sum(f["replayed"] for f in m["fault_log"]) > 0
    assert {f["host"] for f in m["fault_log"]} <= set(full["lineage"]) | {"H0", "H1"}
    assert json.loads((tmp_path / "faulty" / "lineage.json").read_text()) == faulty["lineage"]
    assert m["test_accuracy"] == json.loads((tmp_path / "full" / "metrics.json").read_text())["test_accuracy"]
    assert len(killer.dirs) == kills and not any(os.path.exists(d) for d in killer.dirs)  # removed with the fabric


@pytest.mark.slow
def test_more_faults_than_max_faults_stop_the_run_and_write_metrics(tmp_path, ray_session):
    cfg = load_config("train", SMALL + ["max_faults=1"])
    killer = Killer(2, 12, seed=1)
    from cluster.runtime.fabric import HostLost
    with pytest.raises(HostLost, match="more than max_faults = 1"):
        run_train(cfg, str(tmp_path / "r"), progress=False, on_batch=killer)
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["faults"] == 2 and "the actor died" in m["error"]


def _position(out) -> tuple:
    try:
        with np.load(os.path.join(out, "checkpoint.npz")) as z:
            info = json.loads(str(z["info"]))
        return info["epoch"], info["batch"]
    except (OSError, KeyError, ValueError):
        return None


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_uninterrupted_weights(tmp_path, ray_session):
    sets = ["sizes=[64,16,10]", "epochs=2", "T1=10", "T2=4", "batch=64", "dtype=float64", "checkpoint_every=3"]
    full = run_train(load_config("train", sets), str(tmp_path / "full"), progress=False)
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "experiments", "train", *sum((["--set", s] for s in sets), []), "--out", out]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while (_position(out) or (0, 0)) < (0, 6) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        at = _position(out)
        assert at is not None and at < (2, 0), at  # killed mid-run, after a mid-epoch checkpoint
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait(timeout=30)
    r = run_cli("train", "--resume", out, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(open(os.path.join(out, "lineage.json")).read()) == full["lineage"]
    with np.load(os.path.join(out, "checkpoint.npz")) as z, np.load(str(tmp_path / "full" / "checkpoint.npz")) as f:
        nodes = [k for k in f.files if k.startswith("node/")]
        assert nodes and all(np.array_equal(z[k], f[k]) for k in nodes)  # every node's packed state, byte for byte


@pytest.mark.slow
def test_each_node_is_sent_its_own_checkpoint_logged_as_control_checkpoint(ray_session):
    from cluster.runtime.fabric import FabricError
    from cluster.locality import locality_report
    from cluster.launch import make_engine
    cfg = load_config("train", ["sizes=[64,16,10]", "dtype=float64", "granularity=neuron", "fabric.hosts=2"])
    engine = make_engine(cfg)
    try:
        engine.set_params(engine.model.init_params(0, torch.float64))
        state = engine.get_state()
        engine.message_logs(clear=True)
        engine.set_state(state)
        rep = locality_report(engine.specs, engine.message_logs(), engine.protocol)
        assert rep["controls"] == {"checkpoint": len(engine.specs)} and not rep["violations"]
        assert rep["coordinator"]["control"] == len(engine.specs)
        h0 = sorted(engine.fabric.by_host["H0"])[0]
        with pytest.raises(FabricError, match=f"checkpoints for \\['{h0}'\\], which are not on this host"):
            engine.fabric.call("set_state", per_host={"H1": ({h0: state[h0]},), "H0": ({},)})
    finally:
        engine.close()


@pytest.mark.slow
def test_a_fault_between_an_epochs_row_and_its_checkpoint_adds_no_second_row(tmp_path):
    """The host is lost while the epoch-end checkpoint is gathered (the row is already in metrics): the rollback
    restores the checkpoint's metrics as they were taken, so the replayed epoch is reported once."""
    from cluster.runtime.fabric import HostLost
    sets = ["sizes=[64,8,10]", "epochs=1", "T1=5", "T2=2", "batch=128", "dtype=float64", "checkpoint_every=0",
            "engine=reference"]
    full = run_train(load_config("train", sets), str(tmp_path / "full"), progress=False)
    injected = []

    def on_batch(engine, epoch, b):
        if b == 11 and not injected:  # the last batch: the next gather is the epoch-end checkpoint's
            injected.append(b)

            def lost():
                raise HostLost("host H0 (nodes L1): get_state failed: the actor died (injected)", "H0")
            engine.get_state = lost
    faulty = run_train(load_config("train", sets), str(tmp_path / "faulty"), progress=False, on_batch=on_batch)
    assert injected and faulty["faults"] == 1 and faulty["replayed_batches"] == 12
    assert [r["epoch"] for r in faulty["epochs"]] == [1]
    assert faulty["lineage"] == full["lineage"] and faulty["test_accuracy"] == full["test_accuracy"]
