"""Audit and training of Hamiltonian models under `rhel` / `heb` (docs/algorithms.md §10; nodes/leapfrog.py), and the
experiments `two-mass`, `chain` and `hru-sequence`.

`audit` (run_echo_audit): the program on the engine from the seeded parameters on the first `batch` sequences;
BPTT through the same leapfrog steps (cluster/truth/echo.py, float64) as the truth. audit.json: per parameter and in
total `cosine`, `rel_l2`, `norm_ratio`, `sign_agreement`; `echo_error` (max |state - initial state| after the
unnudged echo, momenta flipped back, run on the same engine); `memory` (bytes each node keeps after the batch, and
the bytes BPTT's autograd keeps); `phase_calls` (the coordinator's phase triggers per node, from the receivers'
logs); `locality`. audit.npz: the pinned bundle with sequence shapes (README, "Hamiltonian echo: pinned keys").

`train` (run_echo_train): epochs of minibatches through the engine (each node applies its own update from its own
estimate), the loss (and for a readout the accuracy) of the training and test sets from the nodes' forward pass;
with `bptt_baseline` a paired BPTT run from the same start. The experiments add their plots and checks.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import torch

from cluster.audit import compare, write_bundle
from cluster.runtime.coordinator import lrs_by_param
from cluster.truth.echo import System, bptt_grad, bptt_saved_bytes, predict, simulate
from cluster.locality import locality_report
from cluster.launch import make_engine, model_from, protocol_from
from experiments.audit import replay_config
from experiments.config import ConfigError
from experiments.results import prepare, pyplot, write_csv, write_json
from experiments.sequences import load_sequences
from nodes.optim import Optimizer
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


def phase_calls(report: dict, program) -> dict:
    """The coordinator's triggers of each phase per node (control messages named after the phase)."""
    n = max(report["nodes"], 1)
    return {ph.name: report["controls"].get(ph.name, 0) / n for ph in program}


def run_echo_audit(cfg, out_dir: str, sets=(), quiet: bool = False, model=None, protocol=None) -> dict:
    bundle = None
    if cfg.replay:
        cfg, bundle = replay_config(cfg, [a for a in sets if "=" in a], META_KEYS, REPLAY_KEYS)
    cfg = dataclasses.replace(cfg, dtype="float64")
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
    if not quiet:
        t = report["total"]
        print(f"audit {proto.name} eps={cfg.eps:g} ({cfg.sided}-sided) on {cfg.engine}/{cfg.granularity}: cosine "
              f"{t['cosine']:.9f}, rel_l2 {t['rel_l2']:.3e}, norm_ratio {t['norm_ratio']:.6f}, echo_error "
              f"{err:.2e}, locality violations {len(report['locality']['violations'])} "
              f"({report['locality']['messages']} messages) -> {out_dir}")
    return report


# ---- training ------------------------------------------------------------------------------------------------
def _evaluate(engine, x, y, T: int, readout: bool) -> dict:
    """The nodes' forward pass on (x, y): mean loss, and the accuracy of a readout's logits."""
    pred = engine._run_batch(x, y, (Phase("forward", T),), apply=False)[0]
    if readout:
        loss = float(torch.nn.functional.cross_entropy(pred, y.argmax(1)))
        return {"loss": loss, "accuracy": float((pred.argmax(1) == y.argmax(1)).double().mean())}
    return {"loss": float(pred.mean())}


def _bptt_eval(model, params, x, y, T, terminal, readout):
    if readout:
        loss, logits = predict(model, params, x, y, T)
        return {"loss": float(loss.mean()), "accuracy": float((logits.argmax(1) == y.argmax(1)).double().mean())}
    with torch.no_grad():
        return {"loss": float(simulate(model, params, x, y, T, terminal)[0])}


def run_echo_train(cfg, out_dir: str, progress: bool = False, model=None, protocol=None) -> dict:
    """Train through the engine; metrics.json: per-epoch train/test loss (and accuracy), the final parameters,
    and with bptt_baseline the paired BPTT run's."""
    model = model or model_from(cfg)
    proto = protocol_from(cfg, protocol)
    data = load_sequences(cfg)
    if data.x_train.shape[1] != cfg.T:
        raise ConfigError("T", f"dataset {cfg.dataset} has sequences of length {data.x_train.shape[1]}, T is {cfg.T}")
    prepare(out_dir, cfg)
    readout = model.echo.loss == "ce-mean"
    params0 = model.init_params(cfg.seed)
    program = proto.program(cfg.eps, cfg.T, cfg.T)
    rng = np.random.default_rng(cfg.seed)
    n = data.x_train.shape[0]
    epochs, rows = [], []
    base = {"params": {k: v.clone() for k, v in params0.items()}, "opt": Optimizer(cfg.optimizer, cfg.momentum)} \
        if cfg.bptt_baseline else None
    lrs = lrs_by_param(model, cfg.lrs)
    engine = make_engine(cfg, model, proto)
    t0 = time.time()
    try:
        engine.set_params(params0)
        same = data.x_test is data.x_train  # one sample (two-mass): the test set is the training set
        train = _evaluate(engine, data.x_train, data.y_train, cfg.T, readout)
        first = {"epoch": 0, "train": train,
                 "test": train if same else _evaluate(engine, data.x_test, data.y_test, cfg.T, readout)}
        if base:
            first["bptt_train"] = _bptt_eval(model, base["params"], data.x_train, data.y_train, cfg.T, proto.terminal,
                                             readout)
            first["bptt_test"] = _bptt_eval(model, base["params"], data.x_test, data.y_test, cfg.T, proto.terminal,
                                            readout)
        epochs.append(first)
        for ep in range(1, cfg.epochs + 1):
            order = rng.permutation(n)
            for lo in range(0, n, cfg.batch):
                idx = torch.from_numpy(order[lo:lo + cfg.batch])
                xb, yb = data.x_train[idx], data.y_train[idx]
                engine._run_batch(xb, yb, program)
                if base:
                    g = bptt_grad(model, base["params"], xb, yb, cfg.T, proto.terminal)
                    base["opt"].step(base["params"], g, lrs)
            train = _evaluate(engine, data.x_train, data.y_train, cfg.T, readout)
            row = {"epoch": ep, "train": train, "test": train if same else _evaluate(engine, data.x_test, data.y_test,
                                                                                     cfg.T, readout),
                   "wall_s": time.time() - t0}
            if base:
                row["bptt_train"] = _bptt_eval(model, base["params"], data.x_train, data.y_train, cfg.T,
                                               proto.terminal, readout)
                row["bptt_test"] = _bptt_eval(model, base["params"], data.x_test, data.y_test, cfg.T, proto.terminal,
                                              readout)
            epochs.append(row)
            if progress:
                print(f"epoch {ep}/{cfg.epochs}: train loss {row['train']['loss']:.4g}, test loss "
                      f"{row['test']['loss']:.4g}" + (f", test accuracy {row['test']['accuracy']:.3f}" if readout else "")
                      + (f" | bptt test loss {row['bptt_test']['loss']:.4g}" if base else "")
                      + f" ({row['wall_s']:.1f} s)", file=sys.stderr)
        final = engine.get_params()
    finally:
        engine.close()
    metrics = {"dataset": data.name, "synthetic": data.synthetic, "epochs": epochs,
               "final_loss": epochs[-1]["train"]["loss"], "initial_loss": epochs[0]["train"]["loss"],
               "final_params": {k: v.tolist() for k, v in final.items()}}
    # the train contract's keys (DESIGN.md "Command line"): null where the model regresses a trajectory
    metrics["test_accuracy"] = epochs[-1]["test"]["accuracy"] if readout else None
    metrics["train_accuracy"] = epochs[-1]["train"]["accuracy"] if readout else None
    if base:
        metrics["bptt_final_params"] = {k: v.tolist() for k, v in base["params"].items()}
        if readout:
            metrics["bptt_test_accuracy"] = epochs[-1]["bptt_test"]["accuracy"]
    for e in epochs:
        rows.append({"epoch": e["epoch"], **{f"{s}_{k}": v for s in ("train", "test", "bptt_train", "bptt_test")
                                             if s in e for k, v in e[s].items()}})
    write_csv(os.path.join(out_dir, "metrics.csv"), rows)
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    _plot_losses(os.path.join(out_dir, "loss.png"), epochs, readout)
    metrics["_final"] = final
    return metrics


def _plot_losses(path, epochs, readout):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if readout else 1, figsize=(10 if readout else 5, 3.5), squeeze=False)
    ep = [e["epoch"] for e in epochs]
    for split in ("train", "test", "bptt_train", "bptt_test"):
        if split in epochs[0]:
            axes[0][0].semilogy(ep, [e[split]["loss"] for e in epochs], label=split.replace("_", " "))
            if readout:
                axes[0][1].plot(ep, [e[split]["accuracy"] for e in epochs], label=split.replace("_", " "))
    axes[0][0].set_xlabel("epoch")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend()
    if readout:
        axes[0][1].set_xlabel("epoch")
        axes[0][1].set_ylabel("accuracy")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
