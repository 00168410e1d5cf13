"""`python -m experiments.toy_nonconservative [--out DIR] [--steps N] [--betas B1,B2,...]`: §13 T1 in-process.

The toy (cluster/truth/nonconservative.t1_toy: 12 units, pinned NumPy draws) and the centralised estimators VF, AEP
(one-sided, +-beta) and Dyadic EP against implicit differentiation at the free state, every relaxation `--steps`
Euler steps (§13: 20,000). Writes toy.json (per method and beta: cosine, rel_l2, the learning phase's residual max
|field|; per method the sweep's fit (experiments/sweep.fit_slopes: the least-squares slope of log rel_l2 against
log beta over >= 4 betas spanning >= 4x whose error is >= 1e-12, else slope None and why)) and table.md; prints the table as it goes. This is the reference the fabric protocols vf, aep,
aep-symmetric and dyadic are checked against.
"""
from __future__ import annotations

import argparse
import os
import time

from cluster.audit import compare
from cluster.truth.implicit import field_jacobian_report
from cluster.truth.nonconservative import Field, estimate, t1_toy
from experiments.results import write_json
from experiments.sweep import fit_slopes

METHODS = ("vf", "aep", "aep-symmetric", "dyadic")


def run(out: str, steps: int = 20000, betas=(0.5, 0.2, 0.1, 0.05, 0.02, 0.01)) -> dict:
    model, params, x, y = t1_toy()
    truth = estimate("implicit", model, params, x, y, 0.0, steps, 0)
    diag = field_jacobian_report(Field(model, params, x).jacobian(truth["free"]))
    report = {"steps": steps, "free_residual": truth["residual"], "jacobian": diag, "points": [], "slopes": {}}
    print(f"T1 toy, {steps} Euler steps per relaxation; free residual {truth['residual']:.2e}; "
          f"J antisymmetry {diag['antisymmetry']:.3f}, abscissa {diag['abscissa']:.3f}", flush=True)
    for beta in betas:
        for m in METHODS:
            t = time.time()
            e = estimate(m, model, params, x, y, beta, steps, steps, S0=truth["free"])
            c = compare(e["grad"], truth["grad"])["total"]
            report["points"].append({"method": m, "beta": beta, "cosine": c["cosine"], "rel_l2": c["rel_l2"],
                                     "residual": e["residual"], "diverged": False, "seconds": time.time() - t})
            print(f"  beta {beta:<5g} {m:<14s} cosine {c['cosine']:.4f}  rel_l2 {c['rel_l2']:.2e}  "
                  f"residual {e['residual']:.1e}", flush=True)
    report["slopes"] = {fit["group"]["method"]: fit for fit in fit_slopes(report["points"], "beta", ["method"])}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "toy.json"), report)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table(report))
    print(table(report))
    return report


def write_bundle_t1(path: str, steps: int = 20000, beta: float = 0.1) -> None:
    """The toy as a replay bundle (docs/algorithms.md §1 format) for config `toy-nonconservative`: meta (model
    vector-graph, sizes [5, 12, 3], vf at beta, T1 = T2 = steps), x, y, param/*, estimate/* the centralised VF
    (cluster/nonconservative), bptt/* BPTT through the free phase (cluster/bptt), implicit/* the implicit truth."""
    from cluster.audit import write_bundle
    from cluster.truth.bptt import bptt_grad
    model, params, x, y = t1_toy()
    truth = estimate("implicit", model, params, x, y, 0.0, steps, 0)
    vf = estimate("vf", model, params, x, y, beta, steps, steps, S0=truth["free"])
    meta = {"model": "vector-graph", "sizes": [5, 12, 3], "activation": "tanh", "protocol": "vf", "beta": beta,
            "T1": steps, "T2": steps, "dt": 0.05, "N": 2, "seed": 1, "granularity": "layer", "transport": "zmq",
            "source": "docs/algorithms.md §13 T1 (NumPy default_rng(1): W, U, b, x, y); estimate: centralised VF "
                      "(cluster/truth/nonconservative.py)"}
    write_bundle(path, meta, x, y, params, vf["grad"], bptt_grad(model, params, x, y, steps), implicit=truth["grad"])


def table(report) -> str:
    rows = ["| β | " + " | ".join(f"{m} cosine | {m} error" for m in METHODS) + " |",
            "|---|" + "---|---|" * len(METHODS)]
    for beta in sorted({p["beta"] for p in report["points"]}, reverse=True):
        by = {p["method"]: p for p in report["points"] if p["beta"] == beta}
        rows.append(f"| {beta:g} | " + " | ".join(f"{by[m]['cosine']:.4f} | {by[m]['rel_l2']:.1e}" for m in METHODS)
                    + " |")
    slopes = ", ".join(f"{m} {f['slope']:.2f}" if f["slope"] is not None else f"{m} -"
                       for m, f in report["slopes"].items())
    return "\n".join(rows) + f"\n\nFitted slopes of log error against log β: {slopes}.\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.toy_nonconservative", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=f"results/toy-nonconservative-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--betas", default="0.5,0.2,0.1,0.05,0.02,0.01")
    p.add_argument("--bundle", metavar="PATH", help="write the toy's replay bundle to PATH instead and exit")
    a = p.parse_args(argv)
    if a.bundle:
        write_bundle_t1(a.bundle, a.steps)
        return 0
    try:
        betas = tuple(float(b) for b in a.betas.split(",") if b.strip())
    except ValueError:
        p.error(f"--betas: expected numbers separated by commas, got {a.betas!r}")
    if a.steps < 1 or not betas or any(b == 0 for b in betas):
        p.error("--steps must be >= 1 and --betas non-empty and non-zero")
    run(a.out, a.steps, betas)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
