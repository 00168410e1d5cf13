"""`compare` (experiments/compare.py): settings crossed with a grid, trained per seed, each with its update-BPTT
alignment at the initial weights; the tables hep-noise and hep-depth are this command on their configs."""
import json
import math

import numpy as np
import pytest

from experiments.compare import initial_angles, points_of, run_compare
from experiments.config import ConfigError, load_config
from tests.conftest import run_cli

TOY = {"dataset": "random", "sizes": [6, 8, 3], "epochs": 1, "T1": 40, "T2": 20, "batch": 64, "lr": 0.01,
       "compare.settings": [{"label": "ep", "set": {"protocol": "ep", "beta": 0.1}},
                            {"label": "hep", "set": {"protocol": "hep", "N": 4, "beta": 0.4}}],
       "compare.grid": {"noise": [0.0, 0.05]}, "compare.seeds": [0, 1], "compare.angle_batches": 2}


@pytest.mark.slow
def test_every_setting_runs_at_every_grid_point_and_seed(tmp_path):
    cfg = load_config("hep-noise", overrides=TOY)
    res = run_compare(cfg, str(tmp_path / "c"))
    assert len(res["points"]) == 2 * 2 * 2
    rows = {(r["setting"], r["grid.noise"]): r for r in res["by_setting"]}
    assert set(rows) == {(s, n) for s in ("ep", "hep") for n in (0.0, 0.05)}
    for (s, n), r in rows.items():
        ps = [p for p in res["points"] if p["setting"] == s and p["grid.noise"] == n]
        assert sorted(p["seed"] for p in ps) == [0, 1] == sorted(r["seeds"])
        assert r["test_accuracy"] == pytest.approx(np.mean([p["test_accuracy"] for p in ps]))
        for p in ps:
            assert json.loads((tmp_path / "c" / p["folder"] / "metrics.json").read_text())["test_accuracy"] == \
                p["test_accuracy"]
    # noise costs one-sided ep at |beta| 0.1 more alignment than hep N 4 at 0.4 (its O(noise / beta) term)
    drop = {s: rows[(s, 0.0)]["cosine"] - rows[(s, 0.05)]["cosine"] for s in ("ep", "hep")}
    assert drop["ep"] > 0.05 and drop["ep"] > 3 * abs(drop["hep"]), drop
    assert (tmp_path / "c" / "table.md").read_text().count("\n") == 2 + 4
    assert (tmp_path / "c" / "compare.png").stat().st_size > 0


def test_the_alignment_is_the_audits_on_the_training_batches_with_their_noise():
    cfg = load_config("hep-noise", overrides={**TOY, "protocol": "hep", "N": 4, "noise": 0.05, "batch": 16})
    a = initial_angles(cfg, 2)
    b = initial_angles(cfg, 2)
    assert len(a) == 2 and a == b and a[0] != a[1]  # deterministic, and each batch its own (samples and draw)
    assert 0 <= a[0]["total"] < 90 and all(math.isfinite(v) for v in a[0]["layers"].values())


@pytest.mark.parametrize("key,value,field", [("compare.settings", [], "compare.settings"),
                                             ("compare.settings", [{"set": {}}], "compare.settings[0]"),
                                             ("compare.grid", {"noise": []}, "compare.grid.noise"),
                                             ("compare.seeds", [], "compare.seeds"),
                                             ("epochs", 0, "epochs")])
def test_bad_sections_are_named(key, value, field):
    with pytest.raises(ConfigError) as err:
        points_of(load_config("hep-noise", overrides={key: value}))
    assert err.value.field == field


def test_a_bad_setting_exits_2_naming_it_before_anything_runs(tmp_path):
    r = run_cli("compare", "hep-noise", "--set", 'compare.settings=[{label: x, set: {N: 1, protocol: hep}}]',
                "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "compare.settings[0]" in r.stderr and "N" in r.stderr
    assert not (tmp_path / "c").exists()


def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path):
    bad = {"label": "diverges", "set": {"model": "energy", "dt": 0.5, "activation": "sigmoid", "noise": 1e7,
                                        "protocol": "ep", "beta": 0.1}}
    cfg = load_config("hep-noise", overrides={**TOY, "compare.settings": [TOY["compare.settings"][0], bad],
                                              "compare.grid": {}, "compare.seeds": [0], "residual_tol": None})
    res = run_compare(cfg, str(tmp_path / "c"))
    ok, failed = res["points"]
    assert "error" not in ok and ok["test_accuracy"] is not None
    assert "diverged" in failed["error"] and "test_accuracy" not in failed
    assert res["by_setting"][1]["failed"] == [0] and "failed" in (tmp_path / "c" / "table.md").read_text()


@pytest.mark.slow
def test_report_epochs_and_the_paired_bptt_baseline_make_columns_and_a_row(tmp_path):
    """compare-nonconservative's shape on a tiny vector field: accuracy after chosen epochs, and BPTT beside AEP."""
    cfg = load_config("compare-nonconservative", overrides={
        "dataset": "random", "sizes": [6, 8, 3], "epochs": 2, "T1": 80, "T2": 40, "batch": 64, "dt": 0.5,
        "compare.seeds": [0, 1], "compare.angle_batches": 1, "compare.report_epochs": [1, 2]})
    res = run_compare(cfg, str(tmp_path / "c"))
    rows = {r["setting"]: r for r in res["by_setting"]}
    assert set(rows) == {"EP (ep-symmetric, tied)", "VF (vf)", "AEP (aep-symmetric)", "Dyadic (dyadic)",
                         "BPTT (beside AEP (aep-symmetric))"}
    aep = [p for p in res["points"] if p["setting"] == "AEP (aep-symmetric)"]
    for p in aep:
        m = json.loads((tmp_path / "c" / p["folder"] / "metrics.json").read_text())
        assert p["test_accuracy_e1"] == m["epochs"][0]["test_accuracy"]
        assert p["bptt"]["test_accuracy_e1"] == m["baseline"][0]["test_accuracy"]
    bptt = rows["BPTT (beside AEP (aep-symmetric))"]
    assert bptt["test_accuracy_e2"] == pytest.approx(np.mean([p["bptt"]["test_accuracy"] for p in aep]))
    assert bptt["cosine"] == 1.0 and "cosine_layer0" not in bptt
    assert all(p["cosine"] > 0.999 for p in res["points"] if p["setting"] in ("AEP (aep-symmetric)", "Dyadic (dyadic)"))
    table = (tmp_path / "c" / "table.md").read_text()
    assert "test accuracy after epoch 1" in table and "test accuracy after epoch 2" in table
