"""The layered nets' family in the training loop (experiments/hooks.py): nets that relax to a fixed point (the
models of nodes/layered.py) under the stationary and oscillating protocols, on the datasets of experiments/datasets.py.

Each batch is one control call per node (engine.train_batch): the coordinator feeds x, y and the batch's beta, the
nodes walk the protocol's phases and apply their local update; training accuracy and loss come from the free
phase's output. With `residual_tol` each batch runs behind the convergence gate (Engine.gated_batch): per epoch and
in total, `dropped_samples` and `hep_fallbacks`. Every epoch: test accuracy and loss (the free phase on the test set),
wall time, the replica drift; with `bptt_baseline` a paired BPTT run (BPTTTrainer). metrics.csv, curves.png and, at
the end, confusion.png.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import lrs_by_param
from cluster.nodeset import pack_held, unpack_held
from cluster.inprocess import relax
from cluster.launch import DTYPES
from experiments.config import ConfigError
from experiments.datasets import load_dataset, one_hot
from experiments.hooks import Training
from experiments.plots import describe, plot_confusion, plot_curves
from experiments.results import write_csv
from nodes.dynamics import cost
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


def epoch_plan(cfg, protocol, n: int, epoch: int) -> tuple:
    """(order, betas): epoch e's sample order and each batch's beta, both drawn from default_rng([seed, e]), so a
    position (epoch, batch) is all a resumed or replayed run needs."""
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(n)
    return order, [protocol.batch_beta(cfg.beta, rng) for _ in range(0, n, cfg.batch)]


class LayeredTraining(Training):
    def __init__(self, cfg, model, protocol):
        super().__init__(cfg, model, protocol)
        self.ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.test_fraction, cfg.data_path, cfg.sizes)
        check_data(cfg, self.ds)
        if cfg.forget_free:
            raise ConfigError("forget_free", "an audit-only test: training reads the free phase's output, which a "
                                             "node that forgets its free phase no longer holds")
        self.Y = one_hot(self.ds.y_train, self.ds.n_classes)
        self.n_train = len(self.ds.x_train)

    def params(self) -> dict:
        cfg = self.cfg
        return self.model.init_params(cfg.seed, DTYPES[cfg.dtype], cfg.init_scale)

    def baseline(self, params: dict):
        return BPTTTrainer(self.cfg, self.model, params) if self.cfg.bptt_baseline else None

    def plan(self, epoch: int) -> tuple:
        return epoch_plan(self.cfg, self.protocol, self.n_train, epoch)

    def tally(self) -> dict:
        return {"correct": 0, "correct_b": 0, "seen": 0, "loss": 0.0, "loss_b": 0.0, "dropped": 0, "fallbacks": 0,
                "seconds": 0.0}

    def train_batch(self, engine, baseline, idx, beta, draw: int, tally: dict) -> None:
        """One training batch (draw: its serial in the run, which keys the noise and names it in the lineage)."""
        cfg, ds = self.cfg, self.ds
        t0 = time.perf_counter()
        x, y = torch.from_numpy(ds.x_train[idx]), torch.from_numpy(self.Y[idx])
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
            # the baseline's free-phase output before its step, as EP's train loss above (a checkpoint from before
            # this figure was kept resumes without it)
            tally["loss_b"] = tally.get("loss_b", 0.0) + float(cost(out_b.to(torch.float64), y)) * len(idx)
        tally["seconds"] += time.perf_counter() - t0

    def postfix(self, tally: dict) -> dict:
        return {"acc": f"{tally['correct'] / tally['seen']:.3f}"}

    def end_epoch(self, engine, baseline, epoch: int, tally: dict, metrics: dict, progress: bool) -> None:
        """Test accuracy and loss; the epoch's row (and the baseline's) appended to metrics."""
        cfg, ds = self.cfg, self.ds
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
                                        "train_loss": tally.get("loss_b", float("nan")) / seen,
                                        "test_accuracy": bacc, "test_loss": bloss})
        _log(row, metrics["baseline"][-1] if baseline is not None else None)

    def finish(self, engine, out_dir: str, metrics: dict) -> None:
        """The test set's confusion matrix at the final weights."""
        ds = self.ds
        if self.cfg.epochs and metrics["epochs"]:
            _, _, pred = evaluate(engine, self.cfg, ds.x_test, ds.y_test, ds.n_classes)
            plot_confusion(os.path.join(out_dir, "confusion.png"), ds.y_test, pred, ds.n_classes)

    def summary(self, metrics: dict, final, baseline) -> dict:
        cfg = self.cfg
        last = metrics["epochs"][-1] if metrics["epochs"] else {}
        summary = {"test_accuracy": last.get("test_accuracy"), "train_accuracy": last.get("train_accuracy"),
                   "engine": cfg.engine, "protocol": cfg.protocol, "dataset": cfg.dataset, **metrics}
        if cfg.residual_tol is not None:  # the convergence gate's totals over the run
            summary.update({k: sum(r.get(k, 0) for r in metrics["epochs"])
                            for k in ("dropped_samples", "hep_fallbacks")})
        if metrics.get("baseline"):
            summary["bptt_test_accuracy"] = metrics["baseline"][-1]["test_accuracy"]
        return summary

    def write(self, out_dir: str, metrics: dict) -> None:
        """metrics.csv (a row per epoch, the baseline's columns beside it) and curves.png."""
        write_csv(os.path.join(out_dir, "metrics.csv"), [
            {**r, **({f"bptt_{k}": v for k, v in b.items() if k != "epoch"} if b else {})}
            for r, b in zip(metrics["epochs"], metrics.get("baseline") or [None] * len(metrics["epochs"]))])
        if metrics["epochs"]:
            plot_curves(os.path.join(out_dir, "curves.png"), metrics, describe(self.cfg))

    def report(self, summary: dict, out_dir: str) -> None:
        n = len(summary["epochs"])
        print(f"test accuracy {summary['test_accuracy']:.4f} after {n} epoch{'s' if n != 1 else ''}" + (
            f" (BPTT baseline {summary['bptt_test_accuracy']:.4f})" if "bptt_test_accuracy" in summary else "")
              + f" -> {out_dir}")


def _log(row, base) -> None:
    text = (f"epoch {row['epoch']}: train {row['train_accuracy']:.4f}  test {row['test_accuracy']:.4f}  "
            f"test loss {row['test_loss']:.4f}  {row['seconds']:.1f} s")
    if "dropped_samples" in row:
        text += f"  dropped {row['dropped_samples']}, fallbacks {row['hep_fallbacks']}"
    if base:
        text += f"  | BPTT test {base['test_accuracy']:.4f}"
    print(text, file=sys.stderr)
