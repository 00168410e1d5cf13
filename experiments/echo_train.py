"""The Hamiltonian models' family in the training loop (experiments/hooks.py): leapfrog (phi, pi) models
(nodes/hamiltonian.py) under `rhel` / `heb` (docs/algorithms.md §10), on the sequences of experiments/sequences.py.

Each batch is one control call per node (engine.train_batch with the echo's eps): the forward pass and the echo on
the batch's sequences, each node applying its own update from its own estimate. Before the first update and after
every epoch the nodes' forward pass gives the loss (and, for a readout, the accuracy) of the training and test sets:
a row {"epoch", "train", "test", "wall_s"} (epoch 0: the initial parameters, without wall_s); with `bptt_baseline`
a paired BPTT run from the same start (cluster/truth/echo.py), in the rows as `bptt_train`, `bptt_test`. The epochs'
sample orders come from one generator seeded with `seed`, epoch after epoch. metrics.json: dataset, synthetic,
epochs, final_loss, initial_loss, final_params, test_accuracy and train_accuracy (null where the model regresses a
trajectory), with the baseline bptt_final_params and bptt_test_accuracy; metrics.csv; loss.png.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from cluster.runtime.coordinator import lrs_by_param
from cluster.truth.echo import bptt_grad, predict, simulate
from cluster.nodeset import pack_held, unpack_held
from experiments.config import ConfigError
from experiments.hooks import Training
from experiments.results import pyplot, write_csv
from experiments.sequences import load_sequences
from nodes.optim import Optimizer
from protocols.base import Phase


class EchoBaseline:
    """The paired BPTT run: same start, batches, optimiser and learning rates; the gradient by BPTT through the
    same leapfrog steps."""

    def __init__(self, cfg, model, params: dict, terminal):
        self.cfg, self.model, self.terminal = cfg, model, terminal
        self.params = {k: v.clone() for k, v in params.items()}
        self.opt = Optimizer(cfg.optimizer, cfg.momentum)
        self.lrs = lrs_by_param(model, cfg.lrs)

    def train_batch(self, x, y) -> None:
        g = bptt_grad(self.model, self.params, x, y, self.cfg.T, self.terminal)
        self.opt.step(self.params, g, self.lrs)

    def evaluate(self, x, y, readout: bool) -> dict:
        if readout:
            loss, logits = predict(self.model, self.params, x, y, self.cfg.T)
            return {"loss": float(loss.mean()), "accuracy": float((logits.argmax(1) == y.argmax(1)).double().mean())}
        with torch.no_grad():
            return {"loss": float(simulate(self.model, self.params, x, y, self.cfg.T, self.terminal)[0])}

    def get_state(self) -> dict:
        return {"bptt": pack_held(self.params, self.opt)}

    def set_state(self, state: dict) -> None:
        params, opt = unpack_held(state["bptt"])
        self.params = dict(params)
        self.opt.set_state(opt)


def evaluate(engine, x, y, T: int, readout: bool) -> dict:
    """The nodes' forward pass on (x, y), no update: mean loss, and the accuracy of a readout's logits."""
    pred = engine.run_batch(x, y, (Phase("forward", T),), apply=False)[0]
    if readout:
        loss = float(torch.nn.functional.cross_entropy(pred, y.argmax(1)))
        return {"loss": loss, "accuracy": float((pred.argmax(1) == y.argmax(1)).double().mean())}
    return {"loss": float(pred.mean())}


class EchoTraining(Training):
    bar = False

    def __init__(self, cfg, model, protocol):
        super().__init__(cfg, model, protocol)
        self.data = load_sequences(cfg)
        if self.data.x_train.shape[1] != cfg.T:
            raise ConfigError("T", f"dataset {cfg.dataset} has sequences of length {self.data.x_train.shape[1]}, "
                                   f"T is {cfg.T}")
        self.readout = model.echo.loss == "ce-mean"
        self.same = self.data.x_test is self.data.x_train  # one sample (two-mass): the test set is the training set
        self.n_train = self.data.x_train.shape[0]

    def params(self) -> dict:
        return self.model.init_params(self.cfg.seed)

    def baseline(self, params: dict):
        return EchoBaseline(self.cfg, self.model, params, self.protocol.terminal) if self.cfg.bptt_baseline else None

    def plan(self, epoch: int) -> tuple:
        """Epoch e's order: the (e + 1)-th permutation drawn from default_rng(seed); every batch at the echo's eps."""
        rng = np.random.default_rng(self.cfg.seed)
        for _ in range(epoch):
            rng.permutation(self.n_train)
        return rng.permutation(self.n_train), [self.cfg.eps] * len(range(0, self.n_train, self.cfg.batch))

    def begin(self, engine, baseline, metrics: dict, tally: dict) -> None:
        """Row 0: the losses at the initial parameters."""
        t0 = time.perf_counter()
        metrics["epochs"].append({"epoch": 0, **self._losses(engine, baseline)})
        tally["seconds"] += time.perf_counter() - t0

    def train_batch(self, engine, baseline, idx, eps, draw: int, tally: dict) -> None:
        t0 = time.perf_counter()
        idx = torch.from_numpy(idx)
        xb, yb = self.data.x_train[idx], self.data.y_train[idx]
        engine.train_batch(xb, yb, eps, self.cfg.T, self.cfg.T, draw)
        if baseline is not None:
            baseline.train_batch(xb, yb)
        tally["seconds"] += time.perf_counter() - t0

    def end_epoch(self, engine, baseline, epoch: int, tally: dict, metrics: dict, progress: bool) -> None:
        """The epoch's row; wall_s: the seconds of training and evaluation so far (the last row's, then this
        epoch's)."""
        t0 = time.perf_counter()
        before = next((r["wall_s"] for r in reversed(metrics["epochs"]) if "wall_s" in r), 0.0)
        row = {"epoch": epoch + 1, **self._losses(engine, baseline, wall_s=0.0)}
        row["wall_s"] = before + tally["seconds"] + time.perf_counter() - t0
        metrics["epochs"].append(row)
        if progress:
            print(f"epoch {epoch + 1}/{self.cfg.epochs}: train loss {row['train']['loss']:.4g}, test loss "
                  f"{row['test']['loss']:.4g}" + (f", test accuracy {row['test']['accuracy']:.3f}" if self.readout
                                                  else "")
                  + (f" | bptt test loss {row['bptt_test']['loss']:.4g}" if baseline is not None else "")
                  + f" ({row['wall_s']:.1f} s)", file=sys.stderr)

    def _losses(self, engine, baseline, **extra) -> dict:
        """{"train", "test", **extra, "bptt_train", "bptt_test"} at the engine's (and the baseline's) parameters."""
        d, T = self.data, self.cfg.T
        train = evaluate(engine, d.x_train, d.y_train, T, self.readout)
        row = {"train": train, "test": train if self.same else evaluate(engine, d.x_test, d.y_test, T, self.readout),
               **extra}
        if baseline is not None:
            row["bptt_train"] = baseline.evaluate(d.x_train, d.y_train, self.readout)
            row["bptt_test"] = baseline.evaluate(d.x_test, d.y_test, self.readout)
        return row

    def summary(self, metrics: dict, final, baseline) -> dict:
        epochs = metrics["epochs"]
        out = {"dataset": self.data.name, "synthetic": self.data.synthetic, "epochs": epochs,
               "final_loss": epochs[-1]["train"]["loss"] if epochs else None,
               "initial_loss": epochs[0]["train"]["loss"] if epochs else None,
               "final_params": None if final is None else {k: v.tolist() for k, v in final.items()}}
        # the train contract's keys (docs/reference/cli.md): null where the model regresses a trajectory
        out["test_accuracy"] = epochs[-1]["test"]["accuracy"] if self.readout and epochs else None
        out["train_accuracy"] = epochs[-1]["train"]["accuracy"] if self.readout and epochs else None
        if baseline is not None:
            out["bptt_final_params"] = {k: v.tolist() for k, v in baseline.params.items()}
            if self.readout and epochs:
                out["bptt_test_accuracy"] = epochs[-1]["bptt_test"]["accuracy"]
        return out

    def report(self, summary: dict, out_dir: str) -> None:
        """The last line: the training loss from the initial to the final parameters (and the test set's, or its
        accuracy for a readout; the BPTT baseline's beside it)."""
        epochs = summary["epochs"]
        if not epochs:
            return
        first, last = epochs[0], epochs[-1]
        text = (f"train loss {first['train']['loss']:.4g} -> {last['train']['loss']:.4g} "
                f"({first['train']['loss'] / max(last['train']['loss'], 1e-300):.3g}x) in {last['epoch']} "
                f"epoch{'s' if last['epoch'] != 1 else ''}")
        if self.readout:
            text += f", test accuracy {last['test']['accuracy']:.4f}"
        elif not self.same:
            text += f", test loss {first['test']['loss']:.4g} -> {last['test']['loss']:.4g}"
        if "bptt_test" in last:
            text += (f" (BPTT baseline test accuracy {last['bptt_test']['accuracy']:.4f})" if self.readout else
                     f" (BPTT baseline test loss {last['bptt_test']['loss']:.4g})")
        print(f"{text} -> {out_dir}")

    def write(self, out_dir: str, metrics: dict) -> None:
        """metrics.csv (a row per epoch: train_loss, test_loss, ..., bptt_test_accuracy) and loss.png."""
        epochs = metrics["epochs"]
        write_csv(os.path.join(out_dir, "metrics.csv"), [
            {"epoch": e["epoch"], **{f"{s}_{k}": v for s in ("train", "test", "bptt_train", "bptt_test") if s in e
                                     for k, v in e[s].items()}} for e in epochs])
        if epochs:
            plot_losses(os.path.join(out_dir, "loss.png"), epochs, self.readout)


def plot_losses(path, epochs, readout):
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
