"""Plots of a training run: accuracy/loss curves (EP and the BPTT baseline) and the confusion matrix."""
from __future__ import annotations

import numpy as np

from experiments.results import pyplot


def plot_curves(path: str, metrics: dict) -> None:
    plt = pyplot()
    ep = metrics["epochs"]
    x = [r["epoch"] for r in ep]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(x, [r["train_accuracy"] for r in ep], "C0--", label="EP train")
    a1.plot(x, [r["test_accuracy"] for r in ep], "C0-", label="EP test")
    if metrics.get("baseline"):
        b = metrics["baseline"]
        a1.plot(x, [r["train_accuracy"] for r in b], "C1--", label="BPTT train")
        a1.plot(x, [r["test_accuracy"] for r in b], "C1-", label="BPTT test")
        a2.plot(x, [r["test_loss"] for r in b], "C1-", label="BPTT test")
    a2.plot(x, [r["test_loss"] for r in ep], "C0-", label="EP test")
    a1.set_xlabel("epoch"), a1.set_ylabel("accuracy"), a1.legend(), a1.grid(alpha=0.3)
    a2.set_xlabel("epoch"), a2.set_ylabel("loss (1/2 ||s_N - y||^2)"), a2.legend(), a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: str, y_true, y_pred, n_classes: int) -> None:
    plt = pyplot()
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(cm, cmap="Blues")
    for i in range(n_classes):
        for j in range(n_classes):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("test confusion matrix")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
