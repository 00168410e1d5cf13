"""`tradeoff CONFIG`: how close the updates follow BPTT against how well the net trains (Ernoult et al. 2020,
Fig. 5(a); docs/algorithms.md §6).

Every point of the config's `tradeoff` section is one setting: `cep` at each learning rate of `cep_lr` (the
per-step eta, model `prototypical`) and `cvf` at each feedback angle psi of `cvf_angle` (model
`prototypical-asym`, feedback started as W^T and each entry's sign flipped with probability (1 - cos psi)/2,
learning rate `lr`), trained once per seed of `seeds` with the rest of the config. The angle of a run is the
update-BPTT angle (degrees, over all forward tensors, as `audit.json`'s `angles.total`) at its initial weights,
averaged over the first `angle_batches` training batches; its errors are 1 - the final accuracies.

Writes metrics.json: `points` (one per run: protocol, lr, angle psi, seed, update_angle, train_error,
test_error, its folder), `spearman` (rank correlation of update_angle with train_error and with test_error over
all runs), `spearman_by_protocol` (the same within cep's eta points and within cvf's psi points: across eta a
smaller rate also trains more slowly in a fixed number of epochs) and `by_setting` (seed means); tradeoff.png (errors against the angle); each run's train folder under
runs/.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from experiments.compare import initial_angles
from experiments.config import ConfigError, _build, validate
from experiments.results import prepare, pyplot, write_json
from experiments.train import run_train


def settings(cfg) -> list:
    """(label, overrides) of every setting of the tradeoff section, validated before anything runs."""
    t = cfg.tradeoff
    out = [(f"cep lr={lr}", dict(protocol="cep", model="prototypical", lr=lr, random_sign=False))
           for lr in t.cep_lr]
    out += [(f"cvf psi={psi:g}", dict(protocol="cvf", model="prototypical-asym", angle=float(psi),
                                     feedback_init="transpose")) for psi in t.cvf_angle]
    if not out:
        raise ConfigError("tradeoff", "no settings: give tradeoff.cep_lr and/or tradeoff.cvf_angle")
    if not t.seeds:
        raise ConfigError("tradeoff.seeds", "give at least one seed")
    if t.angle_batches < 1:
        raise ConfigError("tradeoff.angle_batches", f"must be >= 1, got {t.angle_batches}")
    return out


def point_configs(cfg) -> list:
    runs = []
    for label, over in settings(cfg):
        for seed in cfg.tradeoff.seeds:
            data = {**cfg.to_dict(), **over, "seed": int(seed)}
            runs.append((label, validate(_build(type(cfg), data))))
    return runs


def update_angle(cfg) -> float:
    """The mean update-BPTT angle (degrees, forward tensors) over the first angle_batches training batches, at the
    run's initial weights, on the run's engine."""
    return float(np.mean([a["total"] for a in initial_angles(cfg, cfg.tradeoff.angle_batches, shuffled=False)]))


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (ties share their mean rank)."""
    def ranks(v):
        v = np.asarray(v, float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for x in np.unique(v):
            r[v == x] = r[v == x].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den else float("nan")


def run_tradeoff(cfg, out_dir: str) -> dict:
    runs = point_configs(cfg)
    prepare(out_dir, cfg)
    points = []
    for i, (label, c) in enumerate(runs):
        print(f"tradeoff run {i + 1}/{len(runs)}: {label}, seed {c.seed}", file=sys.stderr)
        folder = os.path.join(out_dir, "runs", f"{c.protocol}-{i:02d}-s{c.seed}")
        ang = update_angle(c)
        m = run_train(c, folder, progress=False)
        points.append({"setting": label, "protocol": c.protocol, "lr": c.lr,
                       "psi": c.angle if c.protocol == "cvf" else None, "seed": c.seed, "update_angle": ang,
                       "train_error": 1.0 - m["train_accuracy"], "test_error": 1.0 - m["test_accuracy"],
                       "folder": os.path.relpath(folder, out_dir)})
        print(f"  angle {ang:.2f} deg, train error {points[-1]['train_error']:.3f}, "
              f"test error {points[-1]['test_error']:.3f}", file=sys.stderr)
    result = {"points": points, "spearman": correlations(points),
              "spearman_by_protocol": {pr: correlations([p for p in points if p["protocol"] == pr])
                                       for pr in dict.fromkeys(p["protocol"] for p in points)},
              "by_setting": by_setting(points)}
    write_json(os.path.join(out_dir, "metrics.json"), result)
    plot_tradeoff(os.path.join(out_dir, "tradeoff.png"), points, result["spearman"])
    print(f"spearman(angle, train error) {result['spearman']['train_error']:.3f}, "
          f"(angle, test error) {result['spearman']['test_error']:.3f} over {len(points)} runs -> {out_dir}")
    return result


def correlations(points) -> dict:
    ang = [p["update_angle"] for p in points]
    return {"train_error": spearman(ang, [p["train_error"] for p in points]),
            "test_error": spearman(ang, [p["test_error"] for p in points]), "runs": len(points)}


def by_setting(points) -> list:
    out = []
    for label in dict.fromkeys(p["setting"] for p in points):
        ps = [p for p in points if p["setting"] == label]
        out.append({"setting": label, "seeds": len(ps),
                    **{k: float(np.mean([p[k] for p in ps])) for k in ("update_angle", "train_error", "test_error")}})
    return out


def plot_tradeoff(path, points, rho) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for ax, key in zip(axes, ("train_error", "test_error")):
        for proto, mark in (("cep", "o"), ("cvf", "s")):
            ps = [p for p in points if p["protocol"] == proto]
            if ps:
                ax.scatter([p["update_angle"] for p in ps], [100 * p[key] for p in ps], marker=mark, label=proto)
        ax.set_xlabel("update-BPTT angle at the initial weights (degrees)")
        ax.set_ylabel(f"final {key.replace('_', ' ')} (%)")
        ax.set_title(f"Spearman {rho[key]:.2f}"), ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
