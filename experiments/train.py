"""`train`: EP training through the fabric (or the in-process engine) with an optional paired BPTT baseline.

Each batch is one control call per node (engine.train_batch): the coordinator feeds x, y and beta, the nodes
walk the protocol's phases and apply their local update; accuracy comes from the free phase's output.
Every epoch: test accuracy and loss, wall time, checkpoint; every `checkpoint_every` batches a checkpoint too, from
which a run recovers when a host actor dies (experiments/recovery.py: rollback and replay, at most `max_faults`
times). With `residual_tol` each batch runs behind the convergence gate (Engine.gated_batch): per epoch and in
total, `dropped_samples` and `hep_fallbacks`. Writes config.yaml, metrics.json (with `faults` and
`replayed_batches`), metrics.csv, curves.png, confusion.png, checkpoint.npz and lineage.json (each node's
(batch serial, update hash) list).
"""
from __future__ import annotations

import copy
import os
import sys
import time

import numpy as np
import torch

from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import lrs_by_param
from cluster.runtime.fabric import HostLost
from cluster.locality import locality_report
from cluster.nodeset import pack_held, unpack_held
from cluster.inprocess import relax
from cluster.launch import DTYPES, make_engine, model_from, protocol_from
from experiments import checkpoint
from experiments.config import ConfigError, load_config
from experiments.datasets import load_dataset, one_hot
from experiments.plots import plot_confusion, plot_curves
from experiments.checkpoint import Snapshot
from experiments.recovery import Rollback
from experiments.results import prepare, write_csv, write_json
from nodes.dynamics import cost
from nodes.hamiltonian import HAMILTONIAN_MODELS
from nodes.optim import Optimizer


def check_data(cfg, ds) -> None:
    if ds.n_features != cfg.sizes[0] or ds.n_classes != cfg.sizes[-1]:
        raise ConfigError("sizes", f"dataset {cfg.dataset} needs sizes[0] = {ds.n_features} and sizes[-1] = "
                                   f"{ds.n_classes}, got {cfg.sizes}")


class BPTTTrainer:
    """The paired baseline: same initial weights, batches, optimiser and learning rates; gradient by BPTT
    through the T1 free steps (Ernoult et al. 2019 `--benchmark`)."""

    name = "bptt"

    def __init__(self, cfg, model, params):
        self.cfg, self.model = cfg, model
        self.dtype, self.device = DTYPES[cfg.dtype], torch.device(cfg.device)
        self.lrs = lrs_by_param(model, cfg.lrs)
        self.opt = Optimizer(cfg.optimizer, cfg.momentum)
        self.params = {k: v.detach().to(self.device, self.dtype).clone() for k, v in params.items()}

    def train_batch(self, x, y, draw=None) -> torch.Tensor:
        """One SGD step on BPTT's gradient; with noise, through the free phase's noise of batch `draw`."""
        x, y = (torch.as_tensor(v).to(self.device, self.dtype) for v in (x, y))
        noise = (self.cfg.noise, self.cfg.seed, draw) if self.cfg.noise and draw is not None else None
        g, out = bptt_grad(self.model, self.params, x, y, self.cfg.T1, with_output=True, noise=noise)
        self.opt.step(self.params, g, self.lrs)
        return out

    @torch.no_grad()
    def infer(self, x, steps: int):
        return relax(self.model, self.params, torch.as_tensor(x).to(self.device, self.dtype), int(steps))[-1]

    def get_state(self) -> dict:
        return {"bptt": pack_held(self.params, self.opt)}

    def set_state(self, state: dict) -> None:
        params, opt = unpack_held(state["bptt"])
        self.params = {k: v.to(self.device, self.dtype) for k, v in params.items()}
        self.opt.set_state(opt)


def evaluate(engine, cfg, x, y, n_classes):
    """Free phase on the test set in chunks; (accuracy, loss, predictions)."""
    preds, losses = [], []
    for i in range(0, len(x), cfg.eval_batch):
        xb, yb = x[i:i + cfg.eval_batch], one_hot(y[i:i + cfg.eval_batch], n_classes)
        out = engine.infer(torch.from_numpy(xb), cfg.T1).to(torch.float64)
        preds.append(out.argmax(1).numpy())
        losses.append(float(cost(out, torch.from_numpy(yb))) * len(xb))
    pred = np.concatenate(preds)
    return float((pred == y).mean()), sum(losses) / len(x), pred


def resume_config(out_dir: str, sets=()):
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(out_dir, checkpoint.FILE)):
        raise ConfigError("--resume", f"{out_dir} holds no config.yaml and checkpoint.npz to resume from")
    return load_config(path, sets), out_dir


def epoch_plan(cfg, protocol, n: int, epoch: int) -> tuple:
    """(order, betas): epoch e's sample order and each batch's beta, both drawn from default_rng([seed, e]), so a
    position (epoch, batch) is all a resumed or replayed run needs."""
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(n)
    return order, [protocol.batch_beta(cfg.beta, rng) for _ in range(0, n, cfg.batch)]


def _tally() -> dict:
    return {"correct": 0, "correct_b": 0, "seen": 0, "loss": 0.0, "dropped": 0, "fallbacks": 0, "seconds": 0.0}


def run_train(cfg, out_dir: str, progress: bool = True, resume: bool = False, model=None, protocol=None,
              on_batch=None) -> dict:
    """Train cfg's net (or `model`) with cfg's protocol (or `protocol`, an object) on cfg's engine; writes out_dir.
    A dead host actor is recovered from by rollback and replay (experiments/recovery.py). `on_batch(engine,
    epoch, batch)` is called before each training batch (fault injection in tests). A Hamiltonian model trains
    through experiments/echo.py."""
    if (model.echo is not None) if model is not None else cfg.model in HAMILTONIAN_MODELS:
        if resume:
            raise ConfigError("--resume", "resuming is not built for Hamiltonian models")
        from experiments.echo import run_echo_train
        out = run_echo_train(cfg, out_dir, progress, model, protocol)
        out.pop("_final", None)
        return out
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.test_fraction, cfg.data_path, cfg.sizes)
    check_data(cfg, ds)
    if cfg.forget_free:
        raise ConfigError("forget_free", "an audit-only test: training reads the free phase's output, which a node "
                          "that forgets its free phase no longer holds")
    if not resume and os.path.isfile(os.path.join(out_dir, checkpoint.FILE)):
        raise ConfigError("--out", f"{out_dir} already holds a run (checkpoint.npz); continue it with "
                                   f"--resume {out_dir} or choose another folder")
    last, record = checkpoint.load(out_dir) if resume else (Snapshot(tally=_tally()), None)
    if not resume:
        prepare(out_dir, cfg)
    model = model or model_from(cfg)
    protocol = protocol_from(cfg, protocol)
    params = model.init_params(cfg.seed, DTYPES[cfg.dtype], cfg.init_scale)
    baseline = BPTTTrainer(cfg, model, params) if cfg.bptt_baseline else None
    rb = Rollback(lambda: make_engine(cfg, model, protocol), params, out_dir, cfg.checkpoint_every, cfg.max_faults,
                  baseline, last, record)
    Y = one_hot(ds.y_train, ds.n_classes)
    n_batches = len(range(0, len(ds.x_train), cfg.batch))
    epoch, b, tally, metrics = rb.last.epoch, rb.last.batch, dict(rb.last.tally), copy.deepcopy(rb.last.metrics)
    engine, final, lineage, locality = None, None, None, None
    try:
        engine = rb.engine()
        while final is None:
            try:
                if epoch < cfg.epochs:
                    order, betas = epoch_plan(cfg, protocol, len(ds.x_train), epoch)
                    bar = _bar(n_batches, b, epoch, cfg, progress)
                    for b in range(b, n_batches):
                        if on_batch is not None:
                            on_batch(engine, epoch, b)
                        _train_batch(engine, baseline, cfg, ds, Y, order[b * cfg.batch:(b + 1) * cfg.batch],
                                     betas[b], epoch * n_batches + b, tally)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(acc=f"{tally['correct'] / tally['seen']:.3f}")
                        if rb.due(b + 1, n_batches):
                            rb.checkpoint(engine, epoch, b + 1, tally, metrics)
                    b = n_batches
                    if bar is not None:
                        bar.close()
                    _end_epoch(engine, baseline, cfg, ds, epoch, tally, metrics)
                    epoch, b, tally = epoch + 1, 0, _tally()
                    rb.checkpoint(engine, epoch, 0, tally, metrics)
                else:
                    final = checkpoint.params_of(engine)
                    if cfg.epochs and metrics["epochs"]:
                        _, _, pred = evaluate(engine, cfg, ds.x_test, ds.y_test, ds.n_classes)
                        plot_confusion(os.path.join(out_dir, "confusion.png"), ds.y_test, pred, ds.n_classes)
                    lineage = {i: [list(r) for r in v] for i, v in sorted(engine.lineage().items())}
                    locality = _locality(engine, out_dir)
            except HostLost as err:
                engine = rb.recover(engine, err, epoch, b, n_batches)
                final = None
                epoch, b, tally = rb.last.epoch, rb.last.batch, dict(rb.last.tally)
                metrics = copy.deepcopy(rb.last.metrics)  # the checkpoint's own copy stays as it was taken
    except BaseException as err:
        _write_metrics(out_dir, cfg, metrics, rb.summary(), error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if engine is not None:
            engine.close()
    summary = _write_metrics(out_dir, cfg, metrics, rb.summary(), lineage=lineage, locality=locality)
    summary.update(final_params=final, lineage=lineage)
    if progress:
        print(f"test accuracy {summary['test_accuracy']:.4f}" + (
            f" (BPTT baseline {summary['bptt_test_accuracy']:.4f})" if "bptt_test_accuracy" in summary else "")
              + f" -> {out_dir}")
    return summary


def _train_batch(engine, baseline, cfg, ds, Y, idx, beta, draw: int, tally: dict) -> None:
    """One training batch (draw: its serial in the run, which keys the noise and names it in the lineage)."""
    t0 = time.perf_counter()
    x, y = torch.from_numpy(ds.x_train[idx]), torch.from_numpy(Y[idx])
    if cfg.residual_tol is None:
        out = engine.train_batch(x, y, beta, cfg.T1, cfg.T2, draw)
    else:
        out, n, fell = engine.gated_batch(x, y, beta, cfg.T1, cfg.T2, draw, cfg.residual_tol)
        tally["dropped"] += n
        tally["fallbacks"] += int(fell)
    out = out.to(torch.float64)
    tally["correct"] += int((out.argmax(1).numpy() == ds.y_train[idx]).sum())
    tally["loss"] += float(cost(out, y)) * len(idx)
    tally["seen"] += len(idx)
    if baseline is not None:
        out_b = baseline.train_batch(x, y, draw)
        tally["correct_b"] += int((out_b.argmax(1).numpy() == ds.y_train[idx]).sum())
    tally["seconds"] += time.perf_counter() - t0


def _end_epoch(engine, baseline, cfg, ds, epoch: int, tally: dict, metrics: dict) -> None:
    """Test accuracy and loss; the epoch's row (and the baseline's) appended to metrics."""
    t0 = time.perf_counter()
    acc, loss, _ = evaluate(engine, cfg, ds.x_test, ds.y_test, ds.n_classes)
    seen = tally["seen"]
    row = {"epoch": epoch + 1, "train_accuracy": tally["correct"] / seen, "train_loss": tally["loss"] / seen,
           "test_accuracy": acc, "test_loss": loss, "train_seconds": tally["seconds"],
           "seconds": tally["seconds"] + time.perf_counter() - t0,
           "replica_drift": max(engine.replica_drift().values(), default=0.0)}
    if cfg.residual_tol is not None:
        row.update(dropped_samples=tally["dropped"], hep_fallbacks=tally["fallbacks"])
    metrics["epochs"].append(row)
    if baseline is not None:
        bacc, bloss, _ = evaluate(baseline, cfg, ds.x_test, ds.y_test, ds.n_classes)
        metrics["baseline"].append({"epoch": epoch + 1, "train_accuracy": tally["correct_b"] / seen,
                                    "test_accuracy": bacc, "test_loss": bloss})
    _log(row, metrics["baseline"][-1] if baseline is not None else None)


def _locality(engine, out_dir: str):
    """A fabric run's locality report (cluster/locality.py) from every message its receivers logged since the fabric
    was built (a recovered run: since its last rebuild) -> locality.json; returns its totals. None in-process."""
    if not hasattr(engine, "message_logs"):
        return None
    rep = locality_report(engine.specs, engine.message_logs(), engine.protocol)
    rep["covers"] = "the messages delivered since the fabric was last built"
    write_json(os.path.join(out_dir, "locality.json"), rep)
    return {k: len(rep[k]) if k == "violations" else rep[k] for k in ("edges", "legal_edges", "messages", "violations")}


def _write_metrics(out_dir: str, cfg, metrics: dict, recovery: dict, lineage=None, error=None, locality=None) -> dict:
    """metrics.json (also when the run failed: what was done, the faults, the error), metrics.csv, curves.png;
    lineage.json: each node's (batch serial, update hash) list."""
    last = metrics["epochs"][-1] if metrics["epochs"] else {}
    summary = {"test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
               "engine": cfg.engine, "protocol": cfg.protocol, "dataset": cfg.dataset, **metrics, **recovery}
    if error is not None:
        summary["error"] = error
    if locality is not None:
        summary["locality"] = locality
    if cfg.residual_tol is not None:  # the convergence gate's totals over the run
        summary.update({k: sum(r.get(k, 0) for r in metrics["epochs"]) for k in ("dropped_samples", "hep_fallbacks")})
    if metrics.get("baseline"):
        summary["bptt_test_accuracy"] = metrics["baseline"][-1]["test_accuracy"]
    write_json(os.path.join(out_dir, "metrics.json"), summary)
    if lineage is not None:
        write_json(os.path.join(out_dir, "lineage.json"), lineage)
    write_csv(os.path.join(out_dir, "metrics.csv"), [
        {**r, **({f"bptt_{k}": v for k, v in b.items() if k != "epoch"} if b else {})}
        for r, b in zip(metrics["epochs"], metrics.get("baseline") or [None] * len(metrics["epochs"]))])
    if metrics["epochs"]:
        plot_curves(os.path.join(out_dir, "curves.png"), metrics)
    return summary


def _bar(n_batches: int, done: int, epoch: int, cfg, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=n_batches, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr, leave=False,
                mininterval=0.5)


def _log(row, base) -> None:
    text = (f"epoch {row['epoch']}: train {row['train_accuracy']:.4f}  test {row['test_accuracy']:.4f}  "
            f"loss {row['test_loss']:.4f}  {row['seconds']:.1f} s")
    if "dropped_samples" in row:
        text += f"  dropped {row['dropped_samples']}, fallbacks {row['hep_fallbacks']}"
    if base:
        text += f"  | BPTT test {base['test_accuracy']:.4f}"
    print(text, file=sys.stderr)
