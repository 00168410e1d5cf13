"""`train` end to end: results folder contract, resume is exact, nothing saved is overwritten."""
import json

import numpy as np
import pytest
import torch

from experiments.config import load_config
from experiments.train import run_train
from tests.conftest import assert_png, run_cli
from tests.test_datasets import write_idx

SMALL = ["sizes=[64,16,10]", "epochs=2", "T1=15", "T2=5", "batch=32", "dtype=float64"]


@pytest.mark.slow
def test_train_cli_writes_the_results_folder(tmp_path, ray_session):
    out = tmp_path / "run"
    r = run_cli("train", *sum((["--set", s] for s in SMALL), []), "--set", "bptt_baseline=true",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["test_accuracy"] <= 1 and len(m["epochs"]) == 2 and m["epochs"][-1]["seconds"] > 0
    assert m["test_accuracy"] > 0.5 and "bptt_test_accuracy" in m  # two epochs of real learning on digits
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "test_accuracy" in rows[0] and "bptt_test_accuracy" in rows[0]
    for f in ("config.yaml", "curves.png", "confusion.png", "checkpoint.npz"):
        assert (out / f).stat().st_size > 0
    assert_png(out / "curves.png", 600, 300)
    assert "bptt_train_loss" in rows[0] and all(b["train_loss"] > 0 for b in m["baseline"])
    before = (out / "checkpoint.npz").read_bytes()
    again = run_cli("train", "--out", str(out), timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (out / "checkpoint.npz").read_bytes() == before


@pytest.mark.slow
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, ray_session):
    sets = SMALL[:1] + ["T1=15", "T2=5", "batch=64", "dtype=float64", "optimizer=adam", "lr=[0.002,0.001]",
                        "protocol=ep-random-sign"]
    for engine in ("reference", "fabric"):
        full = run_train(load_config("train", sets + ["epochs=3", f"engine={engine}"]), str(tmp_path / f"f{engine}"),
                         progress=False)
        part = tmp_path / f"p{engine}"
        run_train(load_config("train", sets + ["epochs=1", f"engine={engine}"]), str(part), progress=False)
        resumed = run_train(load_config(str(part / "config.yaml"), ["epochs=3"]), str(part), progress=False,
                            resume=True)
        for k, v in full["final_params"].items():
            assert torch.equal(resumed["final_params"][k], v), (engine, k)
        assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
        assert np.isclose(resumed["test_accuracy"], full["test_accuracy"])


def test_missing_data_file_is_a_clear_error(tmp_path):
    r = run_cli("train", "--set", "dataset=mnist", "--set", f"data_dir={tmp_path}", "--set", "sizes=[784,10]", "--set", "lr=0.1",
                "--out", str(tmp_path / "x"), timeout=60)
    assert r.returncode == 2 and "train-images-idx3-ubyte" in r.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["pmlp-mnist", "p1h-mnist", "eb1h-mnist", "p2h-mnist"])
def test_published_recipes_train_alike_on_both_engines(recipe, tmp_path, ray_session):
    """Every MNIST recipe (its model, protocol, optimiser, learning rates, batch) trains an epoch of 28x28 IDX
    files on the layer fabric and in-process, and both end with the same weights (float64, short phases)."""
    rng = np.random.default_rng(0)
    for part, n in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{part}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x803)
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte", np.arange(n) % 10, 0x801)
    sets = [f"data_dir={tmp_path}", "epochs=1", "T1=4", "T2=2", "dtype=float64"]
    final = {}
    for engine in ("reference", "fabric"):
        cfg = load_config(recipe, sets + [f"engine={engine}", f"bptt_baseline={engine == 'reference'}"])
        final[engine] = run_train(cfg, str(tmp_path / engine), progress=False)["final_params"]
    for k, ref in final["reference"].items():
        assert float((final["fabric"][k] - ref).norm() / ref.norm()) <= 1e-12, k


@pytest.mark.slow
def test_ctrl_c_exits_130_keeps_what_was_done_and_says_how_to_resume(tmp_path):
    """SIGINT during a training run (in-process engine: no Ray to wait for): exit status 130, metrics.json with the
    error, the checkpoint kept, and the --resume command on stderr."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments", "train", "--set", "engine=reference", "--set", "epochs=50",
           "--set", "checkpoint_every=1", "--set", "sizes=[64,16,10]", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"python -m experiments train --resume {out}" in err
    assert "KeyboardInterrupt" in json.loads((out / "metrics.json").read_text())["error"]
    assert os.path.getsize(out / "checkpoint.npz") > 0


def test_progress_in_a_log_is_plain_lines(capsys):
    from experiments.train import LineProgress
    bar = LineProgress(8, 0, "epoch 1/2")
    for _ in range(8):
        bar.set_postfix({"acc": "0.500"})
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines() == [f"epoch 1/2: {n}/8 batches, acc 0.500" for n in (2, 4, 6)]
