"""The audit of Hamiltonian models under `rhel` / `heb` (docs/algorithms.md §10; nodes/leapfrog.py): `audit` runs it for
their family (experiments/families/hamiltonian.py), and so do the experiments `two-mass`, `chain` and `hru-sequence`.

`audit` (run_echo_audit): the program on the engine from the seeded parameters on the first `batch` sequences;
BPTT through the same leapfrog steps (cluster/truth/echo.py, float64) as the truth. audit.json: per parameter and in
total `cosine`, `rel_l2`, `norm_ratio`, `sign_agreement`; `echo_error` (max |state - initial state| after the
unnudged echo, momenta flipped back, run on the same engine); `memory` (bytes each node keeps after the batch, and
the bytes BPTT's autograd keeps); `phase_calls` (the coordinator's phase triggers per node, from the receivers'
logs); `locality`; for a model whose trained parameters are a few scalars (two-mass: k12), `derivatives`: each
dL/dtheta by the estimate, by BPTT and by central differences of the loss, printed as the audit's last lines.
audit.npz: the pinned bundle with sequence shapes (docs/families/hamiltonian.md, "Pinned keys").
estimate_vs_bptt.png: each parameter's estimate against BPTT entry by entry (experiments/plots.py).

Their training runs in the one training loop (experiments/train.py) with their family's hooks
(experiments/echo_train.py).
"""
from __future__ import annotations

import os
import time

import torch

from cluster.audit import compare, write_bundle
from cluster.truth.echo import System, bptt_grad, bptt_saved_bytes, central_difference, simulate
from cluster.locality import locality_report
from cluster.launch import make_engine, model_from, protocol_from
from experiments.config import ConfigError
from experiments.plots import describe, plot_estimate_vs_bptt
from experiments.replay import replayed
from experiments.results import prepare, write_json
from experiments.sequences import load_sequences
from protocols.base import Phase
from protocols.rhel import EchoPhase

META_KEYS = ("model", "sizes", "protocol", "eps", "T", "dt", "sided", "nudge", "integrator", "seed", "dataset")
REPLAY_KEYS = ("granularity", "transport", "engine", "fabric.log", "fabric.split", "fabric.hosts", "fabric.wire",
               "eps", "sided", "nudge")


def audit_data(cfg, model):
    """(x, y, params): the first `batch` training sequences and the model's seeded parameters."""
    data = load_sequences(cfg)
    x, y = data.x_train[:cfg.batch], data.y_train[:cfg.batch]
    if x.shape[1] != cfg.T:
        raise ConfigError("T", f"dataset {cfg.dataset} has sequences of length {x.shape[1]}, T is {cfg.T}")
    return x, y, model.init_params(cfg.seed)


def echo_error(engine, T: int, start) -> float:
    """max |s - s_0| after forward, flip and the unnudged echo on the engine, momenta flipped back."""
    engine.begin()
    engine.run_phase(Phase("forward", T))
    engine.run_phase(EchoPhase("echo0", T, 0.0, "forward", copies=(0.0,)))
    back = torch.cat(engine.states("echo0"), -1)
    back = torch.stack((back[:, 0], -back[:, 1]), 1)
    return float((back - start).abs().max())


SCALARS = 4        # at most this many trained scalar parameters get their derivatives by central differences
CD_STEP = 1e-5     # the central differences' step, relative to max(1, |theta|)


def derivatives(model, params, x, y, T: int, terminal: bool, estimate: dict, truth: dict) -> dict | None:
    """{name: {estimate, bptt, central_differences, step}} when every trained parameter (the model's `frozen` ones
    left out) is a scalar and there are at most SCALARS of them; else None."""
    frozen = set(getattr(model, "frozen", ()))
    names = [k for k in params if k not in frozen]
    if not names or len(names) > SCALARS or any(params[k].numel() != 1 for k in names):
        return None
    out = {}
    for k in names:
        step = CD_STEP * max(1.0, abs(float(params[k])))
        index = (0,) * params[k].dim()
        out[k] = {"estimate": float(estimate[k].reshape(())), "bptt": float(truth[k].reshape(())),
                  "central_differences": central_difference(model, params, x, y, T, k, index, step, terminal),
                  "step": step}
    return out


def headline(report: dict) -> list:
    """The audit's last lines for the family (experiments/audit.py prints them): one per scalar derivative."""
    return [f"dL/d{k} = {d['estimate']:.7g} (BPTT {d['bptt']:.7g}, central differences "
            f"{d['central_differences']:.7g})" for k, d in (report.get("derivatives") or {}).items()]


def phase_calls(report: dict, program) -> dict:
    """The coordinator's triggers of each phase per node (control messages named after the phase)."""
    n = max(report["nodes"], 1)
    return {ph.name: report["controls"].get(ph.name, 0) / n for ph in program}


def run_echo_audit(cfg, out_dir: str, sets=(), quiet: bool = False, model=None, protocol=None,
                   figures: bool = True) -> dict:
    bundle = None
    if cfg.replay:
        cfg, bundle = replayed(cfg, [a for a in sets if "=" in a], META_KEYS, REPLAY_KEYS)
    cfg = cfg.replace(dtype="float64")
    model = model or model_from(cfg)
    proto = protocol_from(cfg, protocol)
    if bundle is not None:
        x, y, params = bundle["x"], bundle["y"], {k: v.double() for k, v in bundle["param"].items()}
    else:
        x, y, params = audit_data(cfg, model)
    prepare(out_dir, cfg)
    T = cfg.T
    program = proto.program(cfg.eps, T, T)
    engine = make_engine(cfg, model, proto)
    try:
        engine.set_params(params)
        engine.set_batch(x, y)
        engine.begin()
        t0 = time.time()
        for ph in program:
            engine.run_phase(ph)
        wall = time.time() - t0
        estimate = engine.estimate()
        kept = engine.kept_bytes()
        logs = engine.message_logs()
        sys_ = System(model)
        start = torch.stack(sys_.start(x.shape[0], torch.float64), 1)
        err = echo_error(engine, T, start)
    finally:
        engine.close()
    truth = bptt_grad(model, params, x, y, T, terminal=proto.terminal)
    report = compare(estimate, truth)
    report["echo_error"] = err
    report["memory"] = {"node_kept_bytes": kept, "bptt_saved_bytes": bptt_saved_bytes(model, params, x, y, T,
                                                                                        proto.terminal)}
    report["loss"] = float(simulate(model, params, x, y, T, proto.terminal)[0])
    report["wall_s"] = wall
    found = derivatives(model, params, x, y, T, proto.terminal, estimate, truth)
    if found is not None:
        report["derivatives"] = found
    report["engine"] = cfg.engine
    report["locality"] = locality_report(engine.specs, logs, proto)
    report["phase_calls"] = phase_calls(report["locality"], program) if cfg.engine != "reference" else None
    if cfg.engine == "reference":
        report["locality"]["note"] = "in-process engine: messages are passed by reference and not logged"
    meta = {k: getattr(cfg, k) for k in META_KEYS}
    meta.update(granularity=cfg.granularity, transport=cfg.transport, engine=cfg.engine, hosts=cfg.fabric.hosts,
                dtype="float64", terminal=proto.terminal, loss=model.echo.loss, copies=list(program[-1].copies))
    write_bundle(os.path.join(out_dir, "audit.npz"), meta, x, y, params, estimate, truth)
    write_json(os.path.join(out_dir, "audit.json"), report)
    if figures:
        plot_estimate_vs_bptt(os.path.join(out_dir, "estimate_vs_bptt.png"), estimate, truth, report["per_tensor"],
                              f"{describe(meta)} | eps {cfg.eps:g} ({cfg.sided}-sided)")
    if not quiet:
        print(f"audit {proto.name} eps={cfg.eps:g} ({cfg.sided}-sided) on {cfg.engine}/{cfg.granularity}: "
              f"echo_error {err:.2e}, locality violations {len(report['locality']['violations'])} "
              f"({report['locality']['messages']} messages) -> {out_dir}")
    return report
