"""`tradeoff`: cep at several learning rates and cvf at several feedback angles, each trained per seed; the
update-BPTT angle against the final errors, with Spearman's rank correlation."""
import json

import numpy as np
import pytest

from experiments.tradeoff import spearman
from tests.conftest import run_cli


def test_spearman_is_the_rank_correlation():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    b[3] = b[7]  # a tie
    assert abs(spearman(a, b) - stats.spearmanr(a, b).statistic) < 1e-12
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.slow
def test_the_tradeoff_runs_every_setting_and_seed(tmp_path):
    out = tmp_path / "t"
    r = run_cli("tradeoff", "--set", "epochs=1", "--set", "sizes=[64,16,10]", "--set", "T1=15", "--set", "T2=5",
                "--set", "tradeoff.cep_lr=[0.0,0.02]", "--set", "tradeoff.cvf_angle=[0,180]",
                "--set", "tradeoff.seeds=[0,1]", "--set", "tradeoff.angle_batches=2", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["points"]) == 8 and m["spearman"]["runs"] == 8
    assert {p["setting"] for p in m["points"]} == {"cep lr=0.0", "cep lr=0.02", "cvf psi=0", "cvf psi=180"}
    ang = {p["setting"]: p["update_angle"] for p in m["points"] if p["seed"] == 0}
    assert ang["cvf psi=180"] > ang["cvf psi=0"]  # flipped feedback turns the hidden update away from BPTT
    errs = [p["train_error"] for p in m["points"]]
    assert all(0 <= e <= 1 for e in errs)
    assert m["spearman"]["train_error"] == pytest.approx(spearman([p["update_angle"] for p in m["points"]], errs))
    cvf = [p for p in m["points"] if p["protocol"] == "cvf"]
    assert m["spearman_by_protocol"]["cvf"]["test_error"] == pytest.approx(
        spearman([p["update_angle"] for p in cvf], [p["test_error"] for p in cvf]))
    assert (out / "tradeoff.png").stat().st_size > 0
    assert all((out / p["folder"] / "metrics.json").is_file() for p in m["points"])


@pytest.mark.parametrize("sets,field", [(["tradeoff.cep_lr=[]", "tradeoff.cvf_angle=[]"], "tradeoff"),
                                        (["tradeoff.cvf_angle=[200]"], "angle"),
                                        (["tradeoff.cep_lr=[-0.1]"], "lr"),
                                        (["tradeoff.seeds=[]"], "tradeoff.seeds")])
def test_bad_tradeoff_settings_exit_2_by_name(sets, field, tmp_path):
    args = [a for s in sets for a in ("--set", s)]
    r = run_cli("tradeoff", *args, "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and f"{field}:" in r.stderr, r.stderr
    assert not (tmp_path / "t").exists()
