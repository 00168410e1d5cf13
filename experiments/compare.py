"""`compare CONFIG`: settings trained side by side, per seed, with each run's update-BPTT alignment at its initial
weights (docs/algorithms.md §7; docs/guide/sweeps.md lists the shipped comparison configs).

The config's `compare` section lists `settings` (each a `label` and the keys it `set`s) and a `grid` ({key: values},
crossed with every setting, e.g. noise and dataset); every point is trained once per seed of `seeds` with the rest
of the config. Before training, a run's update is compared with BPTT at its initial weights on its first
`angle_batches` training batches (the same draws of the noise as the training run's): cosine per layer pair and
over all forward tensors, averaged over those batches.

Writes metrics.json after every run (`partial` until the last): `points` (one per run: setting, grid values, seed,
cosine, cosine per layer, final test and train accuracy, the gate's counts when `residual_tol` is set, seconds,
its folder under runs/; a run that failed has `error` instead of accuracies and the others go on) and `by_setting`
(mean and std over seeds per setting and grid point, the seeds that failed); table.md (that table); compare.png (test accuracy per
setting, one panel per grid point).
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import time

import numpy as np
import torch

from cluster.audit import angles
from cluster.truth.bptt import bptt_grad
from cluster.launch import make_engine, model_from, protocol_from
from experiments.config import ConfigError, _build, _set_dotted, validate
from experiments.datasets import load_dataset, one_hot
from experiments.families import FAMILIES
from experiments.results import prepare, pyplot, write_json
from experiments.train import run_train

GATE_KEYS = tuple(dict.fromkeys(k for fam in FAMILIES for k in fam.gate_keys))  # the families' gate metrics


def points_of(cfg) -> list:
    """(label, grid values, config) of every run, validated before anything runs."""
    c = cfg.compare
    if not c.settings:
        raise ConfigError("compare.settings", "no settings: give a list of {label, set: {key: value}}")
    if not c.seeds:
        raise ConfigError("compare.seeds", "give at least one seed")
    if cfg.epochs < 1:
        raise ConfigError("epochs", f"compare trains every setting: must be >= 1, got {cfg.epochs}")
    if c.angle_batches < 0:
        raise ConfigError("compare.angle_batches", f"must be >= 0, got {c.angle_batches}")
    for k, vals in c.grid.items():
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"compare.grid.{k}", f"expected a non-empty list of values, got {vals!r}")
    runs = []
    for n, s in enumerate(c.settings):
        if not isinstance(s, dict) or not isinstance(s.get("label"), str) or not isinstance(s.get("set", {}), dict):
            raise ConfigError(f"compare.settings[{n}]", f"expected {{label: str, set: {{key: value}}}}, got {s!r}")
        for values in itertools.product(*c.grid.values()):
            grid = dict(zip(c.grid, values))
            for seed in c.seeds:
                data = {**cfg.to_dict(), "seed": int(seed)}
                for k, v in {**grid, **s.get("set", {})}.items():
                    _set_dotted(data, k, v)
                try:
                    run = validate(_build(type(cfg), data))
                except ConfigError as err:
                    raise ConfigError(f"compare.settings[{n}] ({s['label']}, {grid}): {err.field}",
                                      str(err).partition(": ")[2]) from None
                runs.append((s["label"], grid, run))
    return runs


def initial_angles(cfg, batches: int, shuffled: bool = True) -> list:
    """Per batch, the update-BPTT angles (cluster.audit.angles: per layer pair and in total, degrees) at the run's
    initial weights, in float64 on the run's engine, over its first `batches` training batches: epoch 0's order as
    `train` draws it (`shuffled`) or the first samples in file order; batch k with draw k of the noise, as in
    training."""
    model, proto = model_from(cfg), protocol_from(cfg)
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.test_fraction, cfg.data_path, cfg.sizes)
    params = model.init_params(cfg.seed, torch.float64, cfg.init_scale)
    rng = np.random.default_rng(cfg.seed)
    n = len(ds.x_train)
    order = np.random.default_rng([cfg.seed, 0]).permutation(n) if shuffled else np.arange(n)
    engine = make_engine(cfg.replace(dtype="float64"), model, proto)
    out = []
    try:
        for k in range(batches):
            idx = order[k * cfg.batch:(k + 1) * cfg.batch]
            if not len(idx):
                break
            x = torch.from_numpy(ds.x_train[idx]).double()
            y = torch.from_numpy(one_hot(ds.y_train[idx], ds.n_classes)).double()
            engine.set_params(params)
            engine.set_batch(x, y, k)
            engine.run_program(engine.program(proto.batch_beta(cfg.beta, rng), cfg.T1, cfg.T2))
            truth = bptt_grad(model, params, x, y, cfg.T1, noise=(cfg.noise, cfg.seed, k) if cfg.noise else None)
            out.append(angles(engine.estimate(), truth, model.lr_index))
    finally:
        engine.close()
    return out


def alignment(per_batch: list) -> dict:
    """{"cosine", "layers": {pair: cosine}}: the cosines of initial_angles' angles, averaged over the batches."""
    if not per_batch:
        return {"cosine": None, "layers": {}}
    cos = lambda deg: math.cos(math.radians(deg))  # noqa: E731
    return {"cosine": float(np.mean([cos(a["total"]) for a in per_batch])),
            "layers": {n: float(np.mean([cos(a["layers"][n]) for a in per_batch])) for n in per_batch[0]["layers"]}}


def run_compare(cfg, out_dir: str) -> dict:
    runs = points_of(cfg)
    prepare(out_dir, cfg)
    points = []
    for i, (label, grid, c) in enumerate(runs):
        where = ", ".join(f"{k} {v}" for k, v in grid.items())
        print(f"compare run {i + 1}/{len(runs)}: {label}{', ' + where if where else ''}, seed {c.seed}",
              file=sys.stderr)
        folder = os.path.join(out_dir, "runs", f"{i:03d}-s{c.seed}")
        t0 = time.perf_counter()
        point = {"setting": label, **{f"grid.{k}": v for k, v in grid.items()}, "seed": c.seed,
                 "folder": os.path.relpath(folder, out_dir)}
        try:
            align = alignment(initial_angles(c, cfg.compare.angle_batches))
            point.update(cosine=align["cosine"], cosine_layers=align["layers"])
            m = run_train(c, folder, progress=False)
            point.update(test_accuracy=m["test_accuracy"], train_accuracy=m["train_accuracy"],
                         **{k: m[k] for k in GATE_KEYS if k in m}, **by_epoch(m["epochs"], cfg.compare.report_epochs))
            if m.get("baseline"):  # the paired BPTT run (bptt_baseline): same init, batches, optimiser
                point["bptt"] = {"test_accuracy": m["baseline"][-1]["test_accuracy"],
                                 "train_accuracy": m["baseline"][-1]["train_accuracy"],
                                 **by_epoch(m["baseline"], cfg.compare.report_epochs)}
            cos = f"cosine {align['cosine']:.4f}, " if align["cosine"] is not None else ""
            print(f"  {cos}test accuracy {m['test_accuracy']:.4f}", file=sys.stderr)
        except (RuntimeError, FloatingPointError) as err:  # a failed run is a result too: counted, not fatal
            point["error"] = str(err)
            print(f"  run failed: {err}", file=sys.stderr)
        point["seconds"] = time.perf_counter() - t0
        points.append(point)
        write_json(os.path.join(out_dir, "metrics.json"), {"points": points, "partial": True})
    table = by_setting(points)
    result = {"points": points, "by_setting": table, "grid": dict(cfg.compare.grid), "seeds": list(cfg.compare.seeds)}
    write_json(os.path.join(out_dir, "metrics.json"), result)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(markdown(table))
    plot_compare(os.path.join(out_dir, "compare.png"), table)
    print(markdown(table) + f"-> {out_dir}")
    return result


def epoch_keys(rows) -> list:
    """The `test_accuracy_e<n>` keys present in rows (report_epochs), in epoch order."""
    return sorted({k for r in rows for k in r if k.startswith("test_accuracy_e") and not k.endswith("_std")},
                  key=lambda k: int(k[15:]))


def by_epoch(rows: list, epochs) -> dict:
    """{"test_accuracy_e<n>": test accuracy after epoch n} for the requested epochs that the run reached."""
    return {f"test_accuracy_e{n}": rows[n - 1]["test_accuracy"] for n in epochs if 1 <= n <= len(rows)}


def by_setting(points) -> list:
    """Mean and std over seeds of every setting at every grid point; a setting trained beside its paired BPTT
    baseline adds a row `BPTT (beside <setting>)` from the baselines."""
    groups = {}
    for p in points:
        grid = tuple((k, p[k]) for k in p if k.startswith("grid."))
        groups.setdefault((p["setting"], *grid), []).append(p)
        if "bptt" in p:
            twin = {**p, **p["bptt"], "cosine": 1.0, "cosine_layers": None, **dict.fromkeys(GATE_KEYS)}
            groups.setdefault((f"BPTT (beside {p['setting']})", *grid), []).append(twin)
    out = []
    for key, ps in groups.items():
        row = {"setting": key[0], **dict(key[1:]), "seeds": [p["seed"] for p in ps],
               "failed": [p["seed"] for p in ps if "error" in p]}
        epochs = epoch_keys(ps)
        for k in ("test_accuracy", "train_accuracy", "cosine", *GATE_KEYS, *epochs):
            vals = [p[k] for p in ps if p.get(k) is not None]
            if vals:
                row[k] = float(np.mean(vals))
                if k.startswith("test_accuracy") or k == "cosine":
                    row[k + "_std"] = float(np.std(vals))
        layers = [p["cosine_layers"] for p in ps if p.get("cosine_layers")]
        for n in (layers[0] if layers else {}):
            row[f"cosine_layer{n}"] = float(np.mean([c[n] for c in layers]))
        out.append(row)
    return out


def markdown(table) -> str:
    grid = [k for k in table[0] if k.startswith("grid.")] if table else []
    layers = [k for k in table[0] if k.startswith("cosine_layer")] if table else []
    gate = [k for k in GATE_KEYS if table and k in table[0]]
    epochs = epoch_keys(table)
    head = ["setting", *(k[5:] for k in grid), "seeds", *(f"test accuracy after epoch {k[15:]}" for k in epochs),
            "test accuracy (mean ± std)", "cosine at init",
            *(f"cos layer {k[12:]}" for k in layers), *(f"{k.replace('_', ' ')} (mean per run)" for k in gate)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cos = f"{r['cosine']:.4f}" if "cosine" in r else "—"
        acc = f"{100 * r['test_accuracy']:.1f} ± {100 * r['test_accuracy_std']:.1f} %" if "test_accuracy" in r else "—"
        if r["failed"]:
            acc += f" (seed {','.join(map(str, r['failed']))} failed)"
        at = [f"{100 * r[k]:.1f} ± {100 * r[k + '_std']:.1f} %" if k in r else "—" for k in epochs]
        cells = [r["setting"], *(str(r[k]) for k in grid), ",".join(map(str, r["seeds"])), *at, acc, cos,
                 *(f"{r[k]:.4f}" if k in r else "—" for k in layers), *(f"{r[k]:.0f}" if k in r else "—" for k in gate)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # a label's |beta|
    return "\n".join(lines) + "\n"


def plot_compare(path, table) -> None:
    plt = pyplot()
    grid = [k for k in table[0] if k.startswith("grid.")]
    panels = list(dict.fromkeys(tuple(r[k] for k in grid) for r in table))
    cols = min(4, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 0.4 + 0.35 * len(table) / len(panels) + 2.2 * rows_n),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    table = [r for r in table if "test_accuracy" in r]
    epochs = epoch_keys(table)  # report_epochs: one bar each, the final one last
    keys = [k for k in epochs if any(r[k] != r["test_accuracy"] for r in table if k in r)] + ["test_accuracy"]
    h = 0.8 / len(keys)
    for ax, panel in zip(axes.flat, panels):
        rows = [r for r in table if tuple(r[k] for k in grid) == panel]
        for n, k in enumerate(keys):
            ax.barh([j - 0.4 + h * (n + 0.5) for j in range(len(rows))], [100 * r.get(k, float("nan")) for r in rows],
                    height=h, xerr=[100 * r.get(k + "_std", 0.0) for r in rows], alpha=0.8,
                    label="final" if k == "test_accuracy" else f"epoch {k[15:]}")
        if len(keys) > 1:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(range(len(rows)), [r["setting"] for r in rows], fontsize=7)
        ax.set_xlabel("test accuracy (%)"), ax.grid(alpha=0.3, axis="x")
        ax.set_title(", ".join(f"{k[5:]} {v}" for k, v in zip(grid, panel)) or "all", fontsize=9)
        lo = min(100 * r["test_accuracy"] for r in table)
        ax.set_xlim(max(0.0, lo - 10), 100)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
