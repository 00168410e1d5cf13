"""experiments/regression.py's compare logic on two tiny hand-made recordings (no Ray, no subprocess runs)."""
import json
import os

import numpy as np
import pytest

from experiments import regression as rg


def _recording(root, name="r", w=None, metrics=None, runs=("a",)):
    """A recording folder as `record` writes it: per run its audit.npz and audit.json, and manifest.json."""
    d = root / name
    manifest = {"format": rg.FORMAT, "runs": {}}
    for run in runs:
        (d / run).mkdir(parents=True)
        arrays = {"param/W0": np.arange(6, dtype=np.float64).reshape(2, 3) if w is None else w,
                  "estimate/b0": np.array([0.5, -1.25]), "meta": np.array(json.dumps({"model": "energy"}))}
        np.savez(d / run / "audit.npz", **arrays)
        doc = {"total": {"cosine": 0.99}, "wall_s": 1.0} if metrics is None else metrics
        (d / run / "audit.json").write_text(json.dumps(doc))
        got, mets = rg.read_results(str(d / run))
        manifest["runs"][run] = {"config": "audit", "command": ["python", "-m", "experiments", "audit", "audit"],
                                 "rc": 0, "arrays": {k: rg.describe(v) | {"file": f} for k, (f, v) in got.items()},
                                 "metrics": mets}
    (d / rg.MANIFEST).write_text(json.dumps(manifest))
    return str(d)


def test_identical_recordings_are_bitwise_equal_and_exit_0(tmp_path, capsys):
    a, b = _recording(tmp_path, "a"), _recording(tmp_path, "b", metrics={"total": {"cosine": 0.99}, "wall_s": 7.5})
    assert rg.compare(a, b) == 0
    out = capsys.readouterr().out
    assert "run a: array param/W0: bitwise" in out and "run a: array meta: bitwise" in out
    assert "all 1 runs bitwise equal" in out
    assert "wall_s" not in out  # a timing: excluded by name


def test_one_element_off_exits_1_with_its_max_abs_and_rel_difference(tmp_path, capsys):
    w = np.arange(6, dtype=np.float64).reshape(2, 3)
    w[1, 2] += 1e-3  # 5 -> 5.001
    a, b = _recording(tmp_path, "a"), _recording(tmp_path, "b", w=w)
    assert rg.compare(a, b) == 1
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if "param/W0" in s)
    assert "DIFFERS" in line and "1 of 6 elements differ" in line
    abs_, rel = float(line.split("max abs ")[1].split(",")[0]), float(line.split("max rel ")[1].split(",")[0])
    assert abs_ == pytest.approx(1e-3, rel=1e-6) and rel == pytest.approx(1e-3 / 5.001, rel=1e-3)
    assert "run a: array estimate/b0: bitwise" in out and "RESULT: 1 difference(s)" in out
    # a stated relative bound accepts it, and says so
    assert rg.compare(a, b, tol=1e-3) == 0
    out = capsys.readouterr().out
    assert "within tol 0.001" in out and "not bitwise" in out
    assert rg.compare(a, b, tol=1e-5) == 1


def test_a_manifest_alone_compares_hashes_and_a_changed_metric_counts(tmp_path, capsys):
    w = np.zeros((2, 3))
    a = _recording(tmp_path, "a")
    b = _recording(tmp_path, "b", w=w, metrics={"total": {"cosine": 0.98}})
    assert rg.compare(os.path.join(a, rg.MANIFEST), b) == 1
    out = capsys.readouterr().out
    assert "param/W0: DIFFERS (values not stored; hashes only)" in out
    assert "metric audit:total.cosine: DIFFERS: 0.99 -> 0.98" in out


def test_runs_in_one_recording_only_are_reported_and_fail(tmp_path, capsys):
    a, b = _recording(tmp_path, "a", runs=("x", "y")), _recording(tmp_path, "b", runs=("x", "z"))
    assert rg.compare(a, b, verbose=False) == 1
    out = capsys.readouterr().out
    assert f"run y: only in {a}" in out and f"run z: only in {b}" in out


def test_every_shipped_config_is_run_or_skipped_with_a_reason():
    shipped = {f[:-5] for f in os.listdir(rg.CONFIG_DIR) if f.endswith(".yaml")}
    covered = {r["config"] for r in rg.RUNS} | set(rg.SKIPPED)
    assert shipped <= covered, shipped - covered
    assert not set(rg.SKIPPED) & {r["config"] for r in rg.RUNS}
    assert len({r["name"] for r in rg.RUNS}) == len(rg.RUNS)
    assert all(why for why in rg.SKIPPED.values()) and all(why for why in rg.EXCLUDED.values())


def test_a_checkpoints_node_states_are_decoded_and_its_timings_excluded(tmp_path):
    import msgpack
    w = np.array([[1.0, 2.0]], dtype=np.float32)
    blob = msgpack.packb({"param/W0": ["float32", [1, 2], w.tobytes()], "lineage": ["int64", [1, 2],
                                                                                  np.array([[0, 7]]).tobytes()]})
    info = {"epoch": 1, "tally": {"seen": 0, "seconds": 3.2}, "metrics": {"epochs": [{"test_accuracy": 0.5,
                                                                                      "seconds": 9.0}]}}
    np.savez(tmp_path / "checkpoint.npz", **{"node/L1": np.frombuffer(blob, dtype=np.uint8),
                                              "info": np.array(json.dumps(info))})
    arrays, metrics = rg.read_results(str(tmp_path))
    assert set(arrays) == {"node/L1/param/W0", "node/L1/lineage"}
    assert arrays["node/L1/param/W0"][1].dtype == np.float32 and np.array_equal(arrays["node/L1/param/W0"][1], w)
    assert metrics == {"checkpoint.info:epoch": 1, "checkpoint.info:tally.seen": 0,
                       "checkpoint.info:metrics.epochs.0.test_accuracy": 0.5}


def test_the_committed_baseline_manifest_lists_the_runs_of_the_script():
    path = os.path.join(os.path.dirname(__file__), "regression_manifest.json")
    with open(path) as f:
        runs = json.load(f)["runs"]
    assert {r["name"]: rg.shown(rg.command_line(r, "{out}")) for r in rg.RUNS} == \
        {k: v["command"] for k, v in runs.items()}
    assert all(v["rc"] == 0 and v["arrays"] for v in runs.values())
