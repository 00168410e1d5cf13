"""`audit`, `sweep` and replay through the CLI; the bundle re-verifies from the pinned conventions alone."""
import json
import os
import re

import numpy as np
import pytest
import torch

from tests.conftest import assert_png, run_cli


def load_bundle(path):
    z = np.load(path, allow_pickle=False)
    meta = json.loads(str(z["meta"]))
    group = lambda p: {k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files if k.startswith(p + "/")}
    return meta, torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), group("param"), group("estimate"), \
        group("bptt"), z


def independent_check(meta, x, y, params):
    """docs/algorithms.md §1 written out again, independently of the project's code: the `energy` model's
    Euler steps, BPTT by autograd through T1 steps, and the ep-symmetric estimator."""
    assert meta["model"] == "energy" and meta["activation"] == "sigmoid"
    rho = torch.sigmoid
    N, dt, T1, T2, beta = len(meta["sizes"]) - 1, meta["dt"], meta["T1"], meta["T2"], meta["beta_used"]

    def E(s, p):
        a = [x] + [rho(v) for v in s]
        return sum(0.5 * (v ** 2).sum() for v in s) - sum(
            (a[n + 1] * (a[n] @ p[f"W{n}"].T + p[f"b{n}"])).sum() for n in range(N))

    def run(p, s, steps, b):
        for _ in range(steps):
            s = [v.detach().requires_grad_(True) if not v.requires_grad else v for v in s]
            F = E(s, p) + b * 0.5 * ((s[-1] - y) ** 2).sum()
            g = torch.autograd.grad(F, s, create_graph=True)
            s = [v - dt * gv for v, gv in zip(s, g)]
        return s

    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    zero = [torch.zeros(x.shape[0], d, dtype=torch.float64) for d in meta["sizes"][1:]]
    s0 = run(p, zero, T1, 0.0)
    L = 0.5 * ((s0[-1] - y) ** 2).sum(1).mean()
    bptt = dict(zip(p, torch.autograd.grad(L, list(p.values()))))
    free = [v.detach() for v in s0]
    plain = {k: v.detach() for k, v in params.items()}
    sp = [v.detach() for v in run(plain, free, T2, beta)]
    sm = [v.detach() for v in run(plain, free, T2, -beta)]

    def G(s):
        q = {k: v.clone().requires_grad_(True) for k, v in plain.items()}
        return dict(zip(q, torch.autograd.grad(E(s, q) / x.shape[0], list(q.values()))))
    gp, gm = G(sp), G(sm)
    return bptt, {k: (gp[k] - gm[k]) / (2 * beta) for k in gp}, {k: max(gp[k].norm(), gm[k].norm()) for k in gp}


@pytest.mark.slow
def test_audit_meets_cosine_and_bundle_reverifies(tmp_path, ray_session):
    out = tmp_path / "a"
    r = run_cli("audit", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Token authentication" not in r.stderr and "Started a local Ray" not in r.stderr  # no notice to act on
    rep = json.loads((out / "audit.json").read_text())
    assert rep["total"]["cosine"] >= 0.9999
    assert rep["locality"]["violations"] == [] and rep["locality"]["messages"] > 0
    assert rep["locality"]["globals"]["beta"] == 2 and rep["engine"] == "fabric"
    assert set(rep["per_tensor"]) == {"W0", "b0", "W1", "b1"} and set(rep["residuals"]) == {"free", "plus", "minus"}
    assert rep["replica_drift"] == {"W1": 0.0}  # each end's own update of the shared weight
    for f in ("estimate_vs_bptt.png", "locality.png"):
        assert_png(out / f, 500, 300)
    meta, x, y, params, est, bptt, z = load_bundle(out / "audit.npz")
    assert meta["beta"] == 1e-3 and meta["granularity"] == "layer" and meta["transport"] == "zmq"
    want_bptt, want_est, G = independent_check(meta, x, y, params)
    eps = torch.finfo(torch.float64).eps
    for k in params:
        torch.testing.assert_close(bptt[k], want_bptt[k], rtol=1e-10, atol=1e-14)
        # two implementations of one estimator differ by the rounding of G, divided by 2 beta: measured
        # 0.7 to 1.2 eps |G| / (2 beta) per tensor; 16 leaves room for another machine's operation order
        gap = float((est[k] - want_est[k]).norm())
        assert gap <= 16 * eps * float(G[k]) / (2 * meta["beta_used"]), (k, gap)


@pytest.mark.slow
def test_replay_reproduces_bundle_on_every_granularity(tmp_path, ray_session):
    src = tmp_path / "src"
    assert run_cli("audit", "--set", "beta=1e-1", "--set", "sizes=[64,4,10]", "--set", "T1=80",
                   "--set", "T2=30", "--out", str(src)).returncode == 0
    _, _, _, _, est0, bptt0, _ = load_bundle(src / "audit.npz")
    # neuron granularity on 3 and on 2 host actors (an actor per neuron changes where nodes run, not what a replay
    # reads or writes: tests/test_fabric.py compares that partition's arithmetic)
    for sets in (["granularity=layer"], ["granularity=neuron", "fabric.hosts=3"], ["granularity=neuron", "fabric.hosts=2"],
                 ["engine=reference"]):
        out = tmp_path / "-".join(sets)
        r = run_cli("audit", "--set", f"replay={src / 'audit.npz'}", *sum((["--set", s] for s in sets), []),
                    "--out", str(out))
        assert r.returncode == 0, r.stderr
        meta, _, _, _, est, bptt, _ = load_bundle(out / "audit.npz")
        assert meta["beta"] == 1e-1
        for k in est0:
            assert float((est[k] - est0[k]).norm() / est0[k].norm()) <= 1e-12, (sets, k)
            assert torch.equal(bptt[k], bptt0[k])


@pytest.mark.slow
@pytest.mark.parametrize("sets", [["granularity=layer"], ["fabric.split=2"], ["granularity=neuron", "fabric.hosts=2"],
                                  ["engine=reference"]],
                         ids=lambda s: "-".join(s))
def test_audit_runs_on_any_net_with_random_data(tmp_path, sets, ray_session):
    out = tmp_path / "a"
    r = run_cli("audit", "--set", "sizes=[5,8,6,3]", "--set", "dataset=random", *sum((["--set", s] for s in sets), []),
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "audit.json").read_text())
    assert rep["total"]["cosine"] > 0.999 and set(rep["per_tensor"]) == {"W0", "b0", "W1", "b1", "W2", "b2"}
    assert rep["locality"]["violations"] == []
    _, x, y, _, _, _, _ = load_bundle(out / "audit.npz")
    assert x.shape == (16, 5) and y.shape == (16, 3) and torch.equal(y.sum(1), torch.ones(16, dtype=y.dtype))


def test_an_audit_ends_with_its_cosine_and_relative_error_against_bptt(tmp_path):
    """Whatever the protocol, the audit's last line is its figure: cosine, rel. L2 and norm ratio against BPTT over
    all its tensors, as audit.json's `total` holds them (in-process, a small net on random data)."""
    out = tmp_path / "a"
    r = run_cli("audit", "--set", "sizes=[5,8,6,3]", "--set", "dataset=random", "--set", "batch=4", "--set",
                "engine=reference", "--set", "T1=60", "--set", "T2=20", "--set", "protocol=ep-random-sign",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    t = json.loads((out / "audit.json").read_text())["total"]
    assert r.stdout.strip().splitlines()[-1] == (f"audit: cosine {t['cosine']:.6f}, rel. L2 {t['rel_l2']:.2e}, "
                                                 f"norm ratio {t['norm_ratio']:.4f} vs BPTT (6 tensors)")
    assert t["cosine"] > 0.999


@pytest.mark.slow
def test_stepwise_audit_matches_bptt_per_step_to_order_beta(tmp_path, ray_session):
    rmse = {}
    for beta in ("1e-2", "1e-3"):
        out = tmp_path / beta
        r = run_cli("audit", "--set", "steps=true", "--set", f"beta={beta}", "--set", "protocol=ep",
                    "--set", "T1=300", "--set", "T2=20", "--set", "sizes=[64,8,10]", "--out", str(out))
        assert r.returncode == 0, r.stderr
        rep = json.loads((out / "audit.json").read_text())
        rmse[beta] = {k: v["rmse"] for k, v in rep["steps"].items()}
        _, _, _, _, _, _, z = load_bundle(out / "audit.npz")
        assert z["estimate_steps/W0"].shape == (20, 8, 64) and z["bptt_steps/W0"].shape == (20, 8, 64)
        assert os.path.getsize(out / "gdu.png") > 1000
        assert_png(out / "gdu.png", 600, 400)
        assert_png(out / "estimate_vs_bptt.png", 500, 300)
    for k in rmse["1e-2"]:  # O(beta): ten times smaller beta, about ten times smaller error
        assert 7 < rmse["1e-2"][k] / rmse["1e-3"][k] < 13, (k, rmse)


@pytest.mark.slow
def test_beta_sweep_slopes(tmp_path):
    out = tmp_path / "sw"
    r = run_cli("sweep", "--grid", "beta=1e-1,1e-2,1e-3,1e-4", "--grid", "protocol=ep,ep-symmetric",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "sweep.json").read_text())
    slopes = {s["group"]["protocol"]: s["slope"] for s in res["slopes"]}
    assert abs(slopes["ep"] - 1) < 0.1 and abs(slopes["ep-symmetric"] - 2) < 0.1, slopes
    assert len(res["points"]) == 8 and not any(p["diverged"] for p in res["points"])
    assert res["engines"] == ["reference"] and all(p["engine"] == "reference" for p in res["points"])
    assert "engine reference" in r.stderr
    assert_png(out / "sweep.png", 400, 300)


@pytest.mark.slow
def test_sweep_runs_on_the_fabric_when_asked(tmp_path, ray_session):
    out = tmp_path / "sw"
    r = run_cli("sweep", "--grid", "beta=1e-1,1e-2", "--set", "engine=fabric", "--set", "granularity=layer",
                "--set", "fabric.split=2", "--set", "T1=30", "--set", "T2=20", "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "sweep.json").read_text())
    assert [(p["engine"], p["granularity"], p["locality_violations"]) for p in res["points"]] == [
        ("fabric", "layer", 0)] * 2


INVALID = [  # (command, --set, the field the error must name): each exits 2 before any actor starts, writing nothing
    ("audit", "colour=red", "colour"), ("audit", "T1=-3", "T1"), ("audit", "T2=0", "T2"), ("audit", "beta=0", "beta"),
    ("audit", "activation=relu", "activation"), ("audit", "sizes=[64,0,10]", "sizes"), ("audit", "sizes=[64]", "sizes"),
    ("audit", "batch=2.5", "batch"), ("audit", "batch=0", "batch"), ("audit", "granularity=column", "granularity"),
    ("audit", "fabric.timeout_s=0", "fabric.timeout_s"), ("audit", "lr=[0.1]", "lr"), ("audit", "lr=-0.1", "lr"),
    ("audit", "replay=/nonexistent.npz", "replay"), ("audit", "fabric.wire=carrier-pigeon", "fabric.wire"),
    ("audit", "fabric.hosts=-1", "fabric.hosts"), ("audit", "init_scale=0", "init_scale"),
    ("audit", "protocol=no-such-rule", "protocol"), ("audit", "seed=-1", "seed"), ("audit", "device=cuda:7", "device"),
    ("audit", "device=tpu", "device"), ("audit", "fabric.actor_cpus=-1", "fabric.actor_cpus"),
    ("audit", "fabric.host=999.1.1.1", "fabric.host"), ("audit", "fabric.ports=[1,2]", "fabric.ports"),
    ("audit", "address=no-port", "address"), ("audit", "bench.batches=[0]", "bench.batches"),
    ("audit", "bench.dtypes=[float16]", "bench.dtypes"), ("audit", "bench.sizes=[[5]]", "bench.sizes"),
    ("audit", "bench.neuron_hosts=-2", "bench.neuron_hosts"), ("audit", "bench.steps=0", "bench.steps"),
    ("audit", "bench.repeats=0", "bench.repeats"), ("audit", "bench.neurons=[]", "bench.neurons"),
    ("audit", "N=1", "N"), ("audit", "dt=0", "dt"), ("audit", "momentum=1", "momentum"),
    ("audit", "test_fraction=1", "test_fraction"), ("audit", "dtype=float16", "dtype"),
    ("audit", "optimizer=lbfgs", "optimizer"), ("audit", "transport=carrier", "transport"),
    ("audit", "engine=gpu", "engine"), ("audit", "model=resnet", "model"), ("audit", "fabric.log=verbose", "fabric.log"),
    ("audit", "fabric.exchange=bundles", "fabric.exchange"),
    ("audit", "fabric.split=0", "fabric.split"), ("audit", "noise=-1", "noise"), ("audit", "residual_tol=0", "residual_tol"),
    ("audit", "angle=270", "angle"), ("audit", "feedback_init=random", "feedback_init"),
    ("audit", "eval_batch=0", "eval_batch"), ("audit", "fabric=3", "fabric"), ("audit", "fabric.colour=1", "fabric.colour"),
    ("audit", "fabric.placement=nearby", "fabric.placement"), ("audit", "fabric.ports=[60000,50000]", "fabric.ports"),
    ("audit", "fabric.resources={CPU: 1}", "fabric.resources"), ("audit", "fabric.curve=maybe", "fabric.curve"), ("train", "epochs=-1", "epochs"),
    ("train", "checkpoint_every=-1", "checkpoint_every"), ("train", "max_faults=-2", "max_faults"),
    ("train", "dataset=csv", "data_path"), ("train", "sizes=[64,16,9]", "sizes"),
]


def test_the_invalid_config_table_has_fifty_rows():
    assert len(INVALID) >= 50 and len({s for _, s, _ in INVALID}) == len(INVALID)


@pytest.mark.parametrize("command,setting,field", INVALID)
def test_invalid_config_exits_2_naming_the_field_and_writes_nothing(tmp_path, capsys, command, setting, field):
    """The CLI's main() in this process (the subprocess path is the same function; tests/test_cluster.py and
    tests/test_train.py run it as a subprocess)."""
    from experiments.__main__ import main
    out = tmp_path / "never"
    assert main([command, "--set", setting, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"(^|[\s'\"]){re.escape(field)}[:'\"]", err) and "Traceback" not in err, err
    assert not out.exists()


def test_a_replay_refuses_the_settings_its_bundle_fixes(tmp_path):
    """--set of a key the bundle fixes (its meta, batch, data) is an error naming it, not silently overridden."""
    src = tmp_path / "src"
    assert run_cli("audit", "--set", "sizes=[64,4,10]", "--set", "engine=reference", "--set", "T1=20", "--set",
                   "T2=8", "--out", str(src)).returncode == 0
    for setting in ("seed=3", "sizes=[64,5,10]", "batch=4", "dtype=float32"):
        out = tmp_path / setting.split("=")[0]
        r = run_cli("audit", "--set", f"replay={src / 'audit.npz'}", "--set", setting, "--out", str(out))
        assert r.returncode == 2 and f"--set: {setting.split('=')[0]}: a replayed bundle fixes it" in r.stderr
        assert not out.exists()
