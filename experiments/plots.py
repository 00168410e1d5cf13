"""Plots: training curves (EP and the BPTT baseline), the confusion matrix, the GDU series, the locality graph."""
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


def plot_gdu(path: str, est_steps: dict, bptt_s: dict, scale: dict | None = None, per_tensor: int = 3) -> None:
    """Cumulative EP (dashed) vs BPTT (solid; times scale[k] where given) for a few elements of every tensor and
    neuron group (Ernoult et al. 2019)."""
    plt = pyplot()
    names = list(bptt_s)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, k in zip(axes[0], names):
        e = est_steps[k].reshape(len(est_steps[k]), -1).numpy()
        b = (bptt_s[k] * (scale or {}).get(k, 1.0)).reshape(len(bptt_s[k]), -1).numpy()
        idx = np.argsort(-np.abs(b).sum(0))[:per_tensor]
        for j, i in enumerate(idx):
            c = f"C{j}"
            ax.plot(np.cumsum(b[:, i]), c, lw=1.5)
            ax.plot(np.cumsum(e[:, i]), c, ls="--", lw=1.5)
        ax.set_title(k)
        ax.set_xlabel("t (steps before the end)")
    axes[0][0].set_ylabel("cumulative update (EP dashed, BPTT solid)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_locality(path: str, specs: dict, report: dict, max_labels: int = 40) -> None:
    """The node graph: one column per group, nodes in unit order, each delivered edge drawn with a width that grows
    with its message count (declared but silent edges dotted grey), violations in red; beside it the coordinator's
    global signals and boundary routing, and the violations listed."""
    plt = pyplot()
    groups = []
    for s in specs.values():
        if s.block.group not in groups:
            groups.append(s.block.group)
    pos = {}
    for gx, g in enumerate(groups):
        ids = sorted((i for i, s in specs.items() if s.block.group == g), key=lambda i: specs[i].block.lo)
        for k, i in enumerate(ids):
            pos[i] = (gx, (k + 0.5) / len(ids))
    counts = {}
    for edge, kinds in report.get("per_edge", {}).items():
        src, dst = edge.split("->")
        counts[(src, dst)] = sum(kinds.values())
    bad = {(v["src"], v["dst"]) for v in report.get("violations", ()) if v["src"] in pos and v["dst"] in pos}
    top = max(counts.values(), default=1)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [3, 2]})
    declared = {(p.src, p.dst) for s in specs.values() for p in s.in_ports}
    for (a, b) in declared - set(counts):
        ax.plot(*zip(pos[a], pos[b]), ":", color="0.75", lw=0.6, zorder=1)
    for (a, b), n in counts.items():
        if a in pos and b in pos:
            red = (a, b) in bad
            ax.plot(*zip(pos[a], pos[b]), color="C3" if red else "C0", alpha=0.9 if red else 0.35,
                    lw=(2.5 if red else 0.4 + 2.5 * np.log1p(n) / np.log1p(top)), zorder=3 if red else 2)
    placement = report.get("placement") or {}
    hosts = sorted(set(placement.values()))
    colour = ({h: f"C{k % 10}" for k, h in enumerate(hosts)} if 1 < len(hosts) < len(pos) else {})
    size = max(8, 300 / max(1, len(pos)) ** 0.5)
    for h in hosts if colour else [None]:
        ids = [i for i in pos if h is None or placement.get(i) == h]
        ax.scatter([pos[i][0] for i in ids], [pos[i][1] for i in ids], s=size, zorder=4,
                   color=colour.get(h, "k"), label=f"host {h}" if colour else None)
    if colour:
        ax.legend(fontsize=7, loc="lower right")
    if len(pos) <= max_labels:
        for i, (x, y) in pos.items():
            ax.annotate(i, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yticks([])
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_title(f"delivered messages: {report.get('messages', 0)} on {report.get('edges', 0)} of "
                 f"{report.get('legal_edges', 0)} legal edges")
    side.axis("off")
    lines = ["coordinator -> nodes", "global signals (nodes reached):"]
    lines += [f"  {k}: {n}" for k, n in report.get("globals", {}).items()]
    lines += ["boundary signals:"] + [f"  {k} -> {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
                                      for k, v in report.get("boundary", {}).items()]
    viol = report.get("violations", [])
    lines += ["", f"violations: {len(viol)}"] + [f"  {v['src']} -> {v['dst']}: {v['why']}"[:70] for v in viol[:12]]
    side.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8,
              color="C3" if viol else "k")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
