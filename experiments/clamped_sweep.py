"""Coupled learning's eta sweep against its own eta -> 0 limit, EP and BPTT (docs/families/clamped.md).

    python -m experiments.clamped_sweep [CONFIG] [--set key=value ...] [--out FILE.json]

On CONFIG's audit batch and seeded weights (experiments/audit.audit_batch; default cpl-digits), in float64 on the
in-process engine:

  * lim = (CpL(eta0) + CpL(-eta0)) / 2, the centred difference (G(s_eta0) - G(s_-eta0)) / (2 eta0), error O(eta0^2),
  * for each eta of the sweep, the one-sided CpL(eta) and the centred (CpL(eta) + CpL(-eta)) / 2, their relative
    L2 errors against lim and the log-log slopes of the errors in eta (theory: 1 and 2),
  * BPTT through the T1 free steps (cluster/truth/bptt.py), EP's centred estimate at beta = eta0 (ep-symmetric), CL,
  * the theory's target for lim (protocols/coupled.py): the gradient of L_H = batch mean of
    1/2 (s_out - y)^T H (s_out - y) with H, the output block's Schur complement of E's Hessian, held fixed.
    H comes from the free state's response to the output bias b_out: on `prototypical` dE/ds_out carries -b_out,
    so ds_out/db_out = H^-1; on `energy` it carries -rho(s_out) b_out, so ds_out/db_out = H^-1 diag(rho'(s_out)).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from cluster.truth.bptt import bptt_grad
from cluster.inprocess import ReferenceEngine, relax
from nodes.activations import ACTIVATIONS
from nodes.dynamics import physics_of

ETAS = (0.08, 0.04, 0.02, 0.01)
ETA0 = 1e-4


def estimate(model, params, x, y, protocol, beta, T1, T2, granularity="layer") -> dict:
    """One program of `protocol` on the in-process engine (float64): the assembled estimate."""
    e = ReferenceEngine(model, protocol, torch.float64, granularity=granularity)
    try:
        e.set_params(params)
        e.set_batch(x, y)
        e.run_program(e.program(beta, T1, T2))
        return e.estimate()
    finally:
        e.close()


def output_bias(model) -> str:
    """The bias of the interaction that drives the output group."""
    out = model.output_group.name
    return next(it.bias_of(out) for it in model.interactions if it.bias_of(out))


def output_metric(model, params, x, T1):
    """H per sample, (B, d_out, d_out): the inverse of ds_out/db_out at the free state (times rho'(s_out) on
    `energy`), by autograd through the T1 free steps."""
    b = output_bias(model)

    def free_out(v):
        return relax(model, {**params, b: v}, x, T1)[-1]

    with torch.enable_grad():
        J = torch.autograd.functional.jacobian(free_out, params[b])  # (B, d, d): d s_out,b / d b_out
    if physics_of(model).name == "energy":
        with torch.no_grad():
            s = relax(model, params, x, T1)[-1]
        J = J / ACTIVATIONS[model.activation][1](s)[:, None, :]
    return torch.linalg.inv(J)


def metric_grad(model, params, x, y, T1, H) -> dict:
    """d/dtheta of the batch mean of 1/2 (s_out - y)^T H (s_out - y), H fixed, by BPTT through the T1 free steps."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        d = relax(model, leaves, x, T1)[-1] - y
        L = 0.5 * torch.einsum("bi,bij,bj->b", d, H, d).mean()
        g = torch.autograd.grad(L, list(leaves.values()))
    return {k: v.detach() for k, v in zip(leaves, g)}


def flat(g: dict):
    return torch.cat([g[k].reshape(-1) for k in sorted(g)])


def cosine(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def slope(xs, ys) -> float:
    """The least-squares slope of log ys against log xs."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def sweep(model, params, x, y, T1, T2, etas=ETAS, eta0=ETA0) -> dict:
    """The figures of the module docstring, as a dict."""
    def cpl(eta):
        return flat(estimate(model, params, x, y, "cpl", eta, T1, T2))

    lim = (cpl(eta0) + cpl(-eta0)) / 2
    one, centred, plus = [], [], {}
    for eta in etas:
        gp, gm = cpl(eta), cpl(-eta)
        plus[eta] = gp
        one.append(rel(gp, lim))
        centred.append(rel((gp + gm) / 2, lim))
    truth = flat(bptt_grad(model, params, x, y, T1))
    ep = flat(estimate(model, params, x, y, "ep-symmetric", eta0, T1, T2))
    cl = flat(estimate(model, params, x, y, "cl", 1.0, T1, T2))
    H = output_metric(model, params, x, T1)
    target = flat(metric_grad(model, params, x, y, T1, H))
    eig = torch.linalg.eigvalsh((H + H.transpose(1, 2)) / 2)
    return {"etas": list(etas), "eta0": eta0, "one_sided_error": one, "centred_error": centred,
            "one_sided_slope": slope(etas, one), "centred_slope": slope(etas, centred),
            "centred_constant": centred[-1] / etas[-1] ** 2,
            "limit_vs_target": {"cosine": cosine(lim, target), "rel_l2": rel(lim, target)},
            "limit_vs_bptt": {"cosine": cosine(lim, truth), "rel_l2": rel(lim, truth),
                              "norm_ratio": float(lim.norm() / truth.norm())},
            "limit_vs_ep": {"cosine": cosine(lim, ep), "rel_l2": rel(lim, ep)},
            "ep_vs_bptt": {"cosine": cosine(ep, truth), "rel_l2": rel(ep, truth)},
            "cpl_vs_bptt": {str(e): cosine(g, truth) for e, g in plus.items()},
            "cl_vs_bptt": {"cosine": cosine(cl, truth), "norm_ratio": float(cl.norm() / truth.norm())},
            "H": {"eig_min": float(eig.min()), "eig_max": float(eig.max()),
                  "asymmetry": float((H - H.transpose(1, 2)).abs().max())}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.clamped_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default="cpl-digits")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from cluster.launch import model_from
    from experiments.audit import audit_batch
    from experiments.config import ConfigError, load_config
    try:
        cfg = load_config(args.config, args.sets)
    except ConfigError as err:
        print(f"error: invalid config: {err}", file=sys.stderr)
        return 2
    model = model_from(cfg)
    x, y, params = audit_batch(cfg, model)
    out = sweep(model, params, x, y, cfg.T1, cfg.T2)
    out["config"] = {k: getattr(cfg, k) for k in ("model", "sizes", "activation", "dt", "T1", "T2", "batch", "seed",
                                                   "dataset", "init_scale")}
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
