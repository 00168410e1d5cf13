"""`sweep CONFIG --grid key=v1,v2,... [--grid ...]`: `audit` at every point of the grid product.

Writes sweep.json: `points` (grid values, rel_l2, cosine, diverged; with `residual_tol` also runs_nonconverged, the
phases over the gate, and such a point is `diverged`; with steps=true the audit's step-wise (GDU) metrics per tensor
under `steps`) and `slopes`, the least-squares slope of log rel_l2 against log beta (or eps) for each value of the
other grid keys, with the range fitted (only over >= 4 values spanning >= 4x with error >= 1e-12, diverged points
excluded; otherwise slope None and a note) and `converged_max`, the largest |beta| (or |eps|) at which every run
converged (none diverged; with residual_tol, none over it); sweep.png, the log-log plot with each group's slope in
its legend; with steps=true
steps.png, each tensor's step-wise RMSE against the first grid key (e.g. the eta sweep of continual EP).
"""
from __future__ import annotations

import itertools
import os
import sys
import tempfile

import numpy as np

from experiments.audit import REPLAY_KEYS, NotConverged, replay_config, run_audit
from experiments.config import ConfigError, _build, _set_dotted, parse_value, validate
from experiments.families import FAMILIES
from experiments.results import prepare, pyplot, write_json


def parse_grid(items) -> dict:
    grid = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--grid", f"expected key=v1,v2,..., got {item!r}")
        k, vals = item.split("=", 1)
        grid[k.strip()] = [parse_value(v) for v in vals.split(",") if v.strip()]
        if not grid[k.strip()]:
            raise ConfigError("--grid", f"no values for {k!r}")
    if not grid:
        raise ConfigError("--grid", "give at least one --grid key=v1,v2,...")
    return grid


def run_sweep(cfg, out_dir: str, grid_items, sets=()) -> dict:
    """On a replay config (a bundle's parameters, batch and settings) the grid varies the bundle's settings
    (experiments/audit.REPLAY_KEYS: protocol, beta, T1, T2, ...)."""
    grid = parse_grid(grid_items)
    replay = cfg.replay
    if replay:
        bad = [k for k in grid if k not in REPLAY_KEYS]
        if bad:
            raise ConfigError("--grid", f"a replayed bundle's sweep varies only {', '.join(REPLAY_KEYS)}; got {bad}")
        cfg = replay_config(cfg, sets)[0]
    configs = []
    for values in itertools.product(*grid.values()):
        data = cfg.to_dict()
        for k, v in zip(grid, values):
            _set_dotted(data, k, v)
        configs.append((dict(zip(grid, values)), validate(_build(type(cfg), data))))  # all validated first
    prepare(out_dir, cfg)
    engines = sorted({c.engine for _, c in configs})
    print(f"sweep: {len(configs)} points on engine {', '.join(engines)}"
          + (" (in-process; --set engine=fabric runs every point on the fabric)" if engines == ["reference"] else ""),
          file=sys.stderr)
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (values, c) in enumerate(configs):
            print(f"sweep point {i + 1}/{len(configs)}: {values}", file=sys.stderr)
            head = {**values, "engine": c.engine, "granularity": c.granularity}
            try:
                rep = run_audit(c.replace(replay=replay), os.path.join(tmp, str(i)), quiet=True, figures=False,
                                sets=[*sets, *(f"{k}={v}" for k, v in values.items())])
                t, gate = rep["total"], rep.get("gate")
                points.append({**head, "rel_l2": t["rel_l2"], "cosine": t["cosine"],
                               "diverged": bool(gate and not gate["converged"]),
                               **({"runs_nonconverged": gate["runs_nonconverged"]} if gate else {}),
                               "locality_violations": len(rep["locality"]["violations"]),
                               **{k: rep[k] for fam in FAMILIES for k in fam.sweep_keys if k in rep},
                               **({"steps": rep["steps"]} if "steps" in rep else {})})
            except NotConverged as err:
                points.append({**head, "rel_l2": None, "cosine": None, "diverged": True,
                               "runs_nonconverged": sum(1 for n in err.runs.values() if n), "error": str(err)})
            except (RuntimeError, FloatingPointError) as err:
                points.append({**head, "rel_l2": None, "cosine": None, "diverged": True, "error": str(err)})
    x_key = "beta" if "beta" in grid else ("eps" if "eps" in grid else None)
    slopes = fit_slopes(points, x_key, [k for k in grid if k != x_key]) if x_key else []
    result = {"grid": grid, "engines": engines, "points": points, "slopes": slopes}
    write_json(os.path.join(out_dir, "sweep.json"), result)
    if x_key:
        plot_sweep(os.path.join(out_dir, "sweep.png"), points, x_key, [k for k in grid if k != x_key], slopes,
                   sweep_title(cfg, grid))
    if any("steps" in p for p in points):
        plot_steps(os.path.join(out_dir, "steps.png"), points, list(grid)[0])
    for s in slopes:
        bad = sum(1 for p in points if p["diverged"] and all(p[k] == v for k, v in s["group"].items()))
        if bad:
            print(f"{s['group']}: {bad} point(s) diverged or over residual_tol; every run converged up to "
                  f"|{x_key}| = {s['converged_max']}")
        if s["slope"] is None:
            print(f"no slope for {s['group']}: {s['note']}")
        else:
            print(f"slope {s['slope']:.3f} for {s['group']} over {x_key} in [{s['range'][0]:g}, {s['range'][1]:g}]")
    return result


def sweep_title(cfg, grid: dict) -> str:
    """The sweep's figure title: the model, the settings the grid does not vary, and the grid's keys."""
    fixed = {k: getattr(cfg, k) for k in ("protocol", "engine", "granularity") if k not in grid}
    return (f"{cfg.model} {list(cfg.sizes)} | " + " | ".join(f"{k} {v}" for k, v in fixed.items())
            + f" | grid: {' x '.join(grid)}")


def _groups(points, x_key, others):
    groups = {}
    for p in points:
        groups.setdefault(tuple((k, p[k]) for k in others), []).append(p)
    return groups


FIT_MIN_POINTS, FIT_MIN_SPAN, FIT_MIN_ERROR = 4, 4.0, 1e-12


def fit_slopes(points, x_key, others) -> list:
    """Per group of the other keys, the largest |x| with no divergence (`converged_max`) and the least-squares slope
    of log rel_l2 on log |x|, over the points that did not diverge and whose error is >= 1e-12 (below that rounding, not the estimator, sets it); fitted only over >= 4
    such values spanning >= 4x, otherwise the entry says why (slope None)."""
    out = []
    for key, pts in _groups(points, x_key, others).items():
        converged = [abs(p[x_key]) for p in pts if not p["diverged"]]
        top = {"converged_max": float(max(converged)) if converged else None}
        ok = [p for p in pts if not p["diverged"] and p["rel_l2"] and p["rel_l2"] >= FIT_MIN_ERROR]
        xs = [abs(p[x_key]) for p in ok]
        if len(ok) < FIT_MIN_POINTS or max(xs) < FIT_MIN_SPAN * min(xs):
            out.append({"group": dict(key), "slope": None, "range": [float(min(xs)), float(max(xs))] if xs else None,
                        "points": len(ok), **top, "note": f"not fitted: needs >= {FIT_MIN_POINTS} values of "
                        f"|{x_key}| spanning >= {FIT_MIN_SPAN:g}x with error >= {FIT_MIN_ERROR:g} and no divergence"})
            continue
        lx = np.log10(xs)
        ly = np.log10([p["rel_l2"] for p in ok])
        out.append({"group": dict(key), "slope": float(np.polyfit(lx, ly, 1)[0]),
                    "range": [float(min(xs)), float(max(xs))], "points": len(ok), **top})
    return out


def fitted_line(points, x_key, slope: float) -> tuple:
    """(xs, ys) of the least-squares line of log rel_l2 on log |x| with the given slope over the points fit_slopes
    fits (no divergence, error >= 1e-12): it passes through their mean in log-log, as a least-squares line does."""
    ok = [p for p in points if not p["diverged"] and p["rel_l2"] and p["rel_l2"] >= FIT_MIN_ERROR]
    lx = np.log10([abs(p[x_key]) for p in ok])
    ly = np.log10([p["rel_l2"] for p in ok])
    xs = np.array([lx.min(), lx.max()])
    return 10 ** xs, 10 ** (ly.mean() + slope * (xs - lx.mean()))


def thin_ticks(values, most: int = 7) -> list:
    """The distinct values to label on an axis, at most `most` of them: all when few enough, else evenly spaced
    picks that keep the smallest and the largest."""
    vals = sorted(set(values))
    if len(vals) <= most:
        return vals
    return [vals[i] for i in sorted(set(np.linspace(0, len(vals) - 1, most).round().astype(int)))]


def plot_sweep(path, points, x_key, others, slopes=None, title: str = "") -> None:
    """rel_l2 against |x_key| on log-log axes, a line per group of the other grid keys, with its fitted log-log slope
    (fit_slopes; `slopes` its result, else fitted here) in the legend and the fitted line dashed over the range fitted;
    the grid's values label the x axis. Diverged points are left out and counted in the legend."""
    from matplotlib.ticker import LogLocator, LogFormatterSciNotation, NullFormatter
    plt = pyplot()
    slopes = fit_slopes(points, x_key, others) if slopes is None else slopes
    by_group = {tuple(sorted(s["group"].items())): s for s in slopes}
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    shown = []
    for j, (key, pts) in enumerate(_groups(points, x_key, others).items()):
        ok = sorted((p for p in pts if not p["diverged"] and p["rel_l2"]), key=lambda p: abs(p[x_key]))
        fit = by_group.get(tuple(sorted(key)), {})
        name = ", ".join(f"{k}={v}" for k, v in key) or "rel_l2"
        label = f"{name}: slope {fit['slope']:.2f}" if fit.get("slope") is not None else f"{name}: no slope fitted"
        bad = len(pts) - len(ok)
        if bad:
            label += f" ({bad} diverged, not shown)"
        colour = f"C{j % 10}"
        ax.plot([abs(p[x_key]) for p in ok], [p["rel_l2"] for p in ok], "o-", color=colour, label=label)
        shown += [abs(p[x_key]) for p in ok]
        if fit.get("slope") is not None:
            ax.plot(*fitted_line(pts, x_key, fit["slope"]), "--", color=colour, lw=1, alpha=0.7)
    ax.set_xscale("log"), ax.set_yscale("log")
    if shown:
        ticks = thin_ticks(shown)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], rotation=30 if len(ticks) > 4 else 0)
        ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if hi / lo > 10 else (1.0, 2.0, 5.0), numticks=8))
    ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"|{x_key}|"), ax.set_ylabel("relative L2 error vs BPTT"), ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.1, which="minor")
    ax.legend(fontsize=8, title="dashed: least-squares fit in log-log", title_fontsize=7)
    ax.set_title(f"error against |{x_key}|" + (f"\n{title}" if title else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_steps(path, points, x_key) -> None:
    """Step-wise (GDU) RMSE of every tensor against x_key (symlog axis: 0 is a grid value, e.g. lr = 0)."""
    plt = pyplot()
    ok = [p for p in points if "steps" in p and isinstance(p.get(x_key), (int, float))]
    if not ok:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [p[x_key] for p in ok]
    for k in ok[0]["steps"]:
        ax.plot(xs, [p["steps"][k]["rmse"] for p in ok], "o-", label=k, lw=1)
    nz = [abs(x) for x in xs if x]
    ax.set_xscale("symlog", linthresh=min(nz) if nz else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel(x_key), ax.set_ylabel("step-wise RMSE vs BPTT (Laborieux)"), ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
