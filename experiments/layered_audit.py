"""The layered nets' audit (`audit` runs it for their family: experiments/audit.py): freeze the weights and a batch,
run the protocol on the engine, compare with BPTT (§12).

Writes `audit.npz` (the pinned bundle, docs/algorithms.md §1), `audit.json` (total and per-tensor cosine, rel_l2,
norm_ratio, sign_agreement; angles per layer, in total and for feedback weights; the residual of every phase and, with
`residual_tol`, the convergence gate's counts (`gate`); `implicit` (noiseless runs): implicit differentiation at the free
fixed point (cluster/truth/implicit.py), its gap to BPTT (above 1e-8: the free phase had not settled), the fixed point's
residual and spectral radius, and the estimate against it (the bundle carries `implicit/*`); the locality report from the receivers' logs; the replica
drift of the updates each end computed; with steps=true the GDU metrics) and the plots `estimate_vs_bptt.png` (each
tensor's estimate against BPTT entry by entry), `locality.png` (the node graph by layer, its edges by message kind and
count) and, with steps=true, `gdu.png`. `replay=BUNDLE.npz` re-runs on another
bundle's parameters, batch and settings. The same code runs on either engine (cluster/engine.py).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from cluster.audit import angles, compare, gdu_metrics, write_bundle
from cluster.truth.bptt import bptt_grad, bptt_state_steps, bptt_steps
from cluster.truth.implicit import implicit_grad
from cluster.locality import locality_report
from cluster.nodeset import PhaseError
from cluster.launch import make_engine, model_from, protocol_from
from nodes.dynamics import physics_of
from experiments.config import ConfigError
from experiments.datasets import load_dataset, one_hot
from experiments.layered import check_data
from experiments.plots import describe, plot_estimate_vs_bptt, plot_gdu, plot_locality
from experiments.replay import replayed
from experiments.results import prepare, write_json

META_KEYS = ("model", "sizes", "activation", "protocol", "beta", "T1", "T2", "dt", "N", "seed", "periods", "noise")
REPLAY_KEYS = ("granularity", "transport", "engine", "fabric.log", "fabric.split", "fabric.hosts", "fabric.wire",
               "steps", "protocol", "beta", "T1", "T2", "N")  # what --set may change on a replayed bundle


def replay_config(cfg, sets=()):
    """(config, bundle) of a replayed layered-net bundle: its meta (META_KEYS), then --set on REPLAY_KEYS."""
    return replayed(cfg, sets, META_KEYS, REPLAY_KEYS)


def audit_batch(cfg, model):
    """The frozen batch: the first `batch` training samples of the dataset, and the seeded initial weights (times
    init_scale)."""
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.test_fraction, cfg.data_path, cfg.sizes)
    check_data(cfg, ds)
    x = torch.from_numpy(ds.x_train[:cfg.batch])
    y = torch.from_numpy(one_hot(ds.y_train[:cfg.batch], ds.n_classes))
    return x, y, model.init_params(cfg.seed, torch.float64, cfg.init_scale)


class NotConverged(PhaseError):
    """A gated audit whose nudged phase diverged: `runs` {phase: samples over residual_tol}."""

    def __init__(self, msg: str, runs: dict):
        super().__init__(msg)
        self.runs = runs


def gate_report(phases: dict, tol: float) -> dict:
    """The convergence gate (docs/algorithms.md §12.5): per phase, the samples whose residual max |s_T - s_(T-1)| exceeds
    tol (inf: diverged in a nudged phase); `runs_nonconverged` counts the phases with any."""
    over = {k: int(sum(not r <= tol for r in v["residuals"])) for k, v in phases.items()}
    bad = {k: n for k, n in over.items() if n}
    return {"residual_tol": tol, "nonconverged_samples": over, "runs_nonconverged": len(bad), "converged": not bad,
            "diverged": [k for k, v in phases.items() if any(r == float("inf") for r in v["residuals"])],
            "worst": {k: {"node": v.get("node"), "residual": v["residual"]} for k, v in phases.items()}}


def unsettled(gate: dict, protocol: str) -> str:
    """The failure of a stationary protocol's audit: every phase over the gate, with its worst node and residual."""
    parts = [f"phase {k}: node {w['node']}, residual {w['residual']:.3g}" for k, w in gate["worst"].items()
             if gate["nonconverged_samples"][k]]
    return (f"audit: {'; '.join(parts)} > residual_tol {gate['residual_tol']:g}: protocol {protocol} reads "
            f"stationary states, and these phases had not settled (more steps: T1, T2)")


IMPLICIT_GAP = 1e-8  # relative gap between implicit differentiation and BPTT above which the free phase had not settled
AUDIT_DRAW = 0  # the audit's batch is the run's first: its noise is draw 0's


def noise_of(cfg):
    """(std, seed, draw) of the audit's noise for BPTT (None without noise)."""
    return (cfg.noise, cfg.seed, AUDIT_DRAW) if cfg.noise else None


def step_series(cfg, model, proto, program, phases, params, x, y) -> tuple:
    """The GDU series (docs/algorithms.md §5.2; neurons as docs/guide/auditing.md's "Step-wise audit" pins them): the
    fabric's estimate_steps (parameters from the nodes' G's, neurons `s{n}` = (s^beta_{t+1} - s^beta_t)/beta from the
    recorded states), BPTT's bptt_steps (parameters per transition, neurons -dl/ds_{T1-t} per sample), and the
    factor c of the neurons' relation per group (dt for `energy`, rho'(h*) for `prototypical`)."""
    phase = proto.gdu_phase(program)
    gdu, beta = phases[phase.name], phase.beta
    est = dict(gdu["grad_steps"])
    names = [f"s{model.groups.index(g)}" for g in model.dynamic_groups]
    for k, s in zip(names, gdu["states"]):
        est[k] = (s[1:] - s[:-1]) / beta
    noise = noise_of(cfg)
    ref = {**bptt_steps(model, params, x, y, cfg.T1, cfg.T2, noise),
           **bptt_state_steps(model, params, x, y, cfg.T1, cfg.T2, noise)}
    phys = physics_of(model)
    return est, ref, {k: phys.gdu_state_scale(s[0]) for k, s in zip(names, gdu["states"])}


def run_layered_audit(cfg, out_dir: str, sets=(), quiet: bool = False, model=None, protocol=None,
                      figures: bool = True) -> dict:
    """The audit of cfg's protocol (or `protocol`, an object) on cfg's engine; writes out_dir; returns the report."""
    bundle = None
    if cfg.replay:
        cfg, bundle = replay_config(cfg, [a for a in sets if "=" in a])
    cfg = cfg.replace(dtype="float64")
    model = model or model_from(cfg)
    proto = protocol_from(cfg, protocol)
    if bundle is not None:
        x, y, params = bundle["x"], bundle["y"], {k: v.double() for k, v in bundle["param"].items()}
        if set(params) != set(model.param_shapes()) or any(
                tuple(params[k].shape) != s for k, s in model.param_shapes().items()):
            raise ConfigError("replay", "the bundle's parameters do not match its sizes")
    else:
        x, y, params = audit_batch(cfg, model)
    beta = proto.batch_beta(cfg.beta, np.random.default_rng(cfg.seed))
    prepare(out_dir, cfg)
    implicit = diag = None
    if not cfg.noise:  # implicit differentiation at the free fixed point: a second truth, and a convergence check;
        implicit, diag = implicit_grad(model, params, x, y, cfg.T1)  # its Jacobian report comes before the run
        if diag.get("abscissa", -1.0) >= 0:
            print(f"audit: the field's Jacobian at the free state is unstable (max Re eig J = {diag['abscissa']:.3g} "
                  f">= 0): x0 is no attractor, and J^T, the learning phase's linearisation under AEP and Dyadic EP, "
                  f"is as unstable", file=sys.stderr)
    engine = make_engine(cfg, model, proto)
    try:
        engine.set_params(params)
        engine.set_batch(x, y, AUDIT_DRAW)
        program = engine.program(beta, cfg.T1, cfg.T2)
        phases = engine.run_program(program, record_grads=cfg.steps)
        gate = gate_report(phases, cfg.residual_tol) if cfg.residual_tol is not None else None
        if gate and gate["diverged"]:
            raise NotConverged(f"audit: phase {', '.join(gate['diverged'])} diverged (residual_tol gate; "
                               f"samples over the tolerance per phase: {gate['nonconverged_samples']})",
                               gate["nonconverged_samples"])
        if gate and proto.stationary and not gate["converged"]:
            raise NotConverged(unsettled(gate, proto.name), gate["nonconverged_samples"])
        estimate = engine.estimate()
        drift = engine.estimate_drift()
        logs = engine.message_logs()
    finally:
        engine.close()
    truth = bptt_grad(model, params, x, y, cfg.T1, noise=noise_of(cfg))
    report = compare(estimate, truth)
    if implicit is not None:
        gap = compare(implicit, truth)["total"]["rel_l2"]
        report["implicit"] = {**diag, "bptt_gap": gap, "estimate": compare(estimate, implicit)["total"],
                              "converged": bool(gap <= IMPLICIT_GAP and diag["radius"] < 1)}
    report["angles"] = angles(estimate, truth, model.lr_index)
    report["beta_used"] = beta
    report["engine"] = cfg.engine
    report["residuals"] = {k: v["residual"] for k, v in phases.items()}
    if gate:
        report["gate"] = gate
    report["locality"] = locality_report(engine.specs, logs, proto)
    if cfg.engine == "reference":
        report["locality"]["note"] = "in-process engine: messages are passed by reference and not logged"
    report["replica_drift"] = drift
    meta = {k: getattr(cfg, k) for k in META_KEYS}
    meta.update(beta_used=beta, granularity=cfg.granularity, transport=cfg.transport, engine=cfg.engine,
                hosts=cfg.fabric.hosts, dtype="float64")
    est_steps = bptt_s = None
    if cfg.steps:
        est_steps, bptt_s, scale = step_series(cfg, model, proto, program, phases, params, x, y)
        report["steps"] = gdu_metrics(est_steps, bptt_s, scale)
        if figures:
            plot_gdu(os.path.join(out_dir, "gdu.png"), est_steps, bptt_s, scale, title=describe(meta))
    write_bundle(os.path.join(out_dir, "audit.npz"), meta, x, y, params, estimate, truth, est_steps, bptt_s,
                 implicit)
    write_json(os.path.join(out_dir, "audit.json"), report)
    if figures:
        plot_locality(os.path.join(out_dir, "locality.png"), engine.specs, report["locality"], title=describe(meta))
        plot_estimate_vs_bptt(os.path.join(out_dir, "estimate_vs_bptt.png"), estimate, truth, report["per_tensor"],
                              f"{describe(meta)} | beta {beta:g}")
    if not quiet:
        print(f"audit {cfg.protocol} beta={beta:g} on {cfg.engine}/{cfg.granularity}/{cfg.transport}: "
              f"locality violations {len(report['locality']['violations'])} "
              f"({report['locality']['messages']} messages)"
              + (f", runs over residual_tol {gate['runs_nonconverged']}" if gate else "") + f" -> {out_dir}")
    return report
