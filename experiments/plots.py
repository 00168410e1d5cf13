"""Plots: training curves (EP and the BPTT baseline), the confusion matrix, an estimate against BPTT tensor by
tensor, the GDU series, the locality graph."""
from __future__ import annotations

import math

import numpy as np

from experiments.results import pyplot


def describe(d) -> str:
    """A run's one-line name for a figure title from a config or an audit bundle's meta (a dict or an object):
    model and sizes, protocol, engine/granularity (and hosts above 1)."""
    get = d.get if isinstance(d, dict) else (lambda k, default=None: getattr(d, k, default))
    hosts = get("hosts")
    if hosts is None and get("fabric") is not None:
        hosts = getattr(get("fabric"), "hosts", None)
    sizes = get("sizes")
    where = f"{get('engine', '?')}/{get('granularity', '?')}"
    if get("engine") != "reference" and hosts and hosts > 1:
        where += f", {hosts} hosts"
    return (f"{get('model', '?')}{' ' + str(list(sizes)) if sizes is not None else ''} | protocol "
            f"{get('protocol', '?')} | {where}")


def plot_curves(path: str, metrics: dict, title: str | None = None) -> None:
    """Accuracy (left) and loss (right) per epoch: EP on the training set (dashed, the running figures of the epoch's
    own batches) and on the test set (solid); the paired BPTT baseline's in orange where it ran."""
    plt = pyplot()
    ep = metrics["epochs"]
    x = [r["epoch"] for r in ep]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))

    def both(ax, rows, key, colour, who):
        for split, style in (("train", "--"), ("test", "-")):
            if rows and f"{split}_{key}" in rows[0]:
                ax.plot([r["epoch"] for r in rows], [r[f"{split}_{key}"] for r in rows], style, color=colour,
                        marker="o", ms=3, label=f"{who} {split}")

    for ax, key in ((a1, "accuracy"), (a2, "loss")):
        both(ax, ep, key, "C0", "EP")
        both(ax, metrics.get("baseline") or [], key, "C1", "BPTT")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if len(x) <= 12:
            ax.set_xticks(x)
    a1.set_ylabel("accuracy")
    a1.set_title("accuracy (train: running, over the epoch's batches)", fontsize=9)
    a2.set_ylabel(r"loss  $\frac{1}{2}\,\|s_N - y\|^2$")
    a2.set_title("loss", fontsize=9)
    fig.suptitle(title or "training curves")
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


def grid_shape(n: int, max_cols: int = 4) -> tuple:
    """(rows, columns) of a grid of n panels: about square, at most max_cols columns."""
    cols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    return max(1, math.ceil(n / cols)), cols


def subsample(est, ref, k: int) -> np.ndarray:
    """The indices of at most k entries to scatter, the same on every call: all when there are no more than k; else
    the k // 10 entries farthest from the diagonal (|est - ref|) and the rest drawn from a generator seeded 0."""
    n = len(ref)
    if n <= k:
        return np.arange(n)
    far = np.argsort(-np.abs(np.asarray(est) - np.asarray(ref)), kind="stable")[:k // 10]
    rest = np.setdiff1d(np.arange(n), far)
    pick = np.random.default_rng(0).choice(rest, k - len(far), replace=False)
    return np.sort(np.concatenate([far, pick]))


def fmt_cosine(c: float) -> str:
    """A cosine readable near 1: '1 - 3.2e-09' above 0.9999, else four decimals."""
    if c is None or not math.isfinite(c):
        return "nan"
    return f"1 - {1 - c:.1e}" if 0.9999 < c < 1 else f"{c:.4f}"


def plot_estimate_vs_bptt(path: str, estimate: dict, bptt: dict, per_tensor: dict | None = None,
                          title: str = "", max_points: int = 3000) -> None:
    """One panel per parameter tensor: each entry's estimate (y) against its BPTT gradient (x), the diagonal y = x
    (a perfect estimate lies on it), the tensor's cosine and relative L2 error in the panel's title (`per_tensor`,
    the audit's figures, else computed here). Above max_points entries a panel shows a fixed subsample (subsample:
    the entries farthest from the diagonal among them)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    from cluster.audit import compare
    plt = pyplot()
    names = list(bptt)
    per_tensor = per_tensor or compare(estimate, bptt)["per_tensor"]
    rows, cols = grid_shape(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.5 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, names):
        b = np.asarray(bptt[k], dtype=np.float64).ravel()
        e = np.asarray(estimate[k], dtype=np.float64).ravel()
        idx = subsample(e, b, max_points)
        few = len(idx) <= 50
        ax.scatter(b[idx], e[idx], s=25 if few else 6, alpha=0.9 if few else 0.5, color="C0", lw=0, label="entries",
                   rasterized=len(idx) > 500, zorder=3)
        lo, hi = float(min(b.min(), e.min())), float(max(b.max(), e.max()))
        pad = max(0.05 * (hi - lo), 0.05 * max(abs(lo), abs(hi)), 1e-12)  # one entry, or all alike: a sane box
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "-", color="0.3", lw=0.8, label="y = x")
        ax.set_xlim(lo - pad, hi + pad), ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal", adjustable="box")
        m = per_tensor.get(k, {})
        shown = (f"{len(idx)} of {len(b)} entries" if len(idx) < len(b) else
                 f"{len(b)} entr{'y' if len(b) == 1 else 'ies'}")
        ax.set_title(f"{k} {tuple(np.shape(bptt[k]))}: cos {fmt_cosine(m.get('cosine'))}, "
                     f"rel L2 {m.get('rel_l2') if m.get('rel_l2') is not None else float('nan'):.2e}\n({shown})", fontsize=8)
        ax.set_xlabel("BPTT gradient", fontsize=8)
        ax.set_ylabel("estimate", fontsize=8)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=4))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"estimate vs BPTT, tensor by tensor\n{title}" if title else "estimate vs BPTT, tensor by tensor",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gdu(path: str, est_steps: dict, bptt_s: dict, scale: dict | None = None, per_tensor: int = 3,
             title: str = "") -> None:
    """The step-wise updates (GDU, Ernoult et al. 2019), one panel per tensor and neuron group: for the per_tensor
    elements with the largest summed |BPTT| (one colour each, its index in the legend), the cumulative BPTT update
    (solid; times scale[k] where given) and the cumulative EP update (dashed) over the steps. Dashed on solid: EP
    follows BPTT step by step."""
    from matplotlib.lines import Line2D
    plt = pyplot()
    names = list(bptt_s)
    rows, cols = grid_shape(len(names), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.9), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, names):
        shape = tuple(bptt_s[k].shape[1:])
        e = est_steps[k].reshape(len(est_steps[k]), -1).numpy()
        b = (bptt_s[k] * (scale or {}).get(k, 1.0)).reshape(len(bptt_s[k]), -1).numpy()
        idx = np.argsort(-np.abs(b).sum(0), kind="stable")[:per_tensor]
        for j, i in enumerate(idx):
            c = f"C{j}"
            at = tuple(int(v) for v in np.unravel_index(i, shape)) if shape else ()
            ax.plot(np.cumsum(b[:, i]), c, lw=1.5, label=f"{k}{list(at)}")
            ax.plot(np.cumsum(e[:, i]), color=c, ls="--", lw=1.5)
        ax.set_title(f"{k} {shape}" + (" (BPTT x c)" if k in (scale or {}) else ""), fontsize=9)
        ax.set_xlabel("t (steps before the end)", fontsize=8)
        ax.set_ylabel("cumulative update", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="element", title_fontsize=6, loc="center right")  # the curves settle at
        # the right; "best" searched every vertex of every panel and made this the slowest part of an audit
    style = [Line2D([], [], color="k", lw=1.5, label="BPTT (solid)"),
             Line2D([], [], color="k", ls="--", lw=1.5, label="EP estimate (dashed)")]
    if scale:
        style.append(Line2D([], [], ls="", label="BPTT x c: neurons, times their factor c"))
    fig.legend(handles=style, loc="upper right", ncol=1, fontsize=8, frameon=False)
    fig.suptitle("step-wise updates (GDU): EP against BPTT" + (f"\n{title}" if title else ""), fontsize=10,
                 x=0.02, ha="left")
    top = 1 - 0.9 / (3.2 * rows + 0.9)  # fixed margins: tight_layout measured every label of every panel again
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.6 / (3.2 * rows + 0.9), top=top - 0.05 / rows, hspace=0.45,
                        wspace=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


KINDS = {"a": "a: the signal a(s)", "r": "r: the signal's twin", "t": "t: transposed product",
         "g": "g: back along a directed term"}
KIND_COLOURS = {"a": "C0", "r": "C2", "t": "C4", "g": "C1"}


def kind_colour(kind: str, seen: list) -> str:
    """A message kind's colour: fixed for the known kinds, the next free tab colour (never red) for others."""
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    spare = [c for c in ("C5", "C6", "C8", "C9", "C7") if c not in KIND_COLOURS.values()]
    return spare[seen.index(kind) % len(spare)] if kind in seen else spare[0]


def layered_positions(specs: dict, edges=()) -> tuple:
    """(positions, groups): node id -> (x, y), a column per group at x = 0, 1, ... in the order the nodes come (layer
    after layer). A column's nodes lie in unit order from the bottom, spread evenly over (0, 1); a group of four or
    more nodes that message each other (a directed pair within it among `edges`, pairs (src, dst)) lies instead on an
    ellipse within its column (half-width 0.3), in unit order counter-clockwise from the bottom, so that the edges
    between its nodes are chords apart rather than arcs along one line."""
    groups = []
    for s in specs.values():
        if s.block.group not in groups:
            groups.append(s.block.group)
    group = {i: s.block.group for i, s in specs.items()}
    inner = {group[a] for a, b in edges if a in group and b in group and a != b and group[a] == group[b]}
    pos = {}
    for gx, g in enumerate(groups):
        ids = sorted((i for i, s in specs.items() if s.block.group == g), key=lambda i: (specs[i].block.lo, i))
        n = len(ids)
        for k, i in enumerate(ids):
            if g in inner and n >= 4:
                t = 2 * math.pi * (k + 0.5) / n
                pos[i] = (gx + 0.3 * math.sin(t), 0.5 - 0.47 * math.cos(t))
            else:
                pos[i] = (float(gx), (k + 0.5) / n)
    return pos, groups


def edge_arcs(edges) -> dict:
    """The curvature (matplotlib's arc3 rad) of each directed edge (src, dst, kind): the kinds between one ordered pair
    get rising curvatures 0.15, 0.3, ...; as the curvature bends to the same side of the direction of travel, a->b
    and b->a bow apart and no two parallel edges coincide."""
    by_pair = {}
    for a, b, kind in sorted(edges):
        by_pair.setdefault((a, b), []).append(kind)
    return {(a, b, kind): 0.15 * (1 + j) for (a, b), kinds in by_pair.items() for j, kind in enumerate(kinds)}


def plot_locality(path: str, specs: dict, report: dict, max_labels: int = 40, title: str = "") -> None:
    """The node graph laid out by layer (layered_positions: a column per group, its nodes in unit order): every
    directed edge a curved arrow (both directions and each message kind between a pair apart: edge_arcs), coloured by
    message kind, wider with more messages; declared but silent edges dotted grey; violations in red; nodes coloured
    by host. The title counts nodes, edges, messages and violations; beside it the legend, the messages per kind, the
    coordinator's global signals and boundary routing, and the violations listed."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch
    plt = pyplot()
    counts = {}
    for edge, kinds in report.get("per_edge", {}).items():
        src, dst = edge.split("->")
        for kind, n in kinds.items():
            counts[(src, dst, kind)] = n
    declared = {(p.src, p.dst, p.kind) for s in specs.values() for p in s.in_ports}
    pos, groups = layered_positions(specs, {(a, b) for a, b, _ in set(counts) | declared})
    viol = report.get("violations", [])
    bad = {(v["src"], v["dst"], v.get("kind", "")) for v in viol if v["src"] in pos and v["dst"] in pos}
    edges = {e for e in set(counts) | declared | bad if e[0] in pos and e[1] in pos and e[0] != e[1]}
    widest = 3.0 if len(edges) <= 30 else (1.6 if len(edges) <= 300 else 0.8)
    rad = edge_arcs(edges)
    top = max(counts.values(), default=1)
    tall = max(sum(1 for g2 in (s.block.group for s in specs.values()) if g2 == g) for g in groups) if groups else 1
    height = min(11.0, max(4.0, 3.0 + 0.12 * tall)) if tall > 1 else 2.8
    fig = plt.figure(figsize=(max(10.0, 2.8 * len(groups) + 4.5), height + 1.0))
    grid = fig.add_gridspec(2, 2, width_ratios=[max(3.0, 1.4 * len(groups)), 1.6], height_ratios=[height, 1.0])
    ax, side, foot = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    many = len(edges) > 1500
    others = sorted({k for _, _, k in edges} - set(KIND_COLOURS))
    per_kind = {}
    for (a, b, kind) in sorted(edges):
        n = counts.get((a, b, kind), 0)
        per_kind[kind] = per_kind.get(kind, 0) + n
        if (a, b, kind) in bad:
            colour, lw, ls, alpha, z = "C3", 2.5, "-", 0.95, 3
        elif n:
            colour, lw, ls, alpha, z = kind_colour(kind, others), 0.4 + (widest - 0.4) * np.log1p(n) / np.log1p(top), "-", \
                (0.75 if len(edges) <= 50 else 0.5 if len(edges) <= 300 else 0.3), 2
        else:
            colour, lw, ls, alpha, z = "0.6", 0.8, ":", 0.8, 1
        ax.add_patch(FancyArrowPatch(pos[a], pos[b], connectionstyle=f"arc3,rad={rad[(a, b, kind)]}",
                                     arrowstyle="-" if many else "-|>",
                                     mutation_scale=9 if len(edges) <= 300 else 5, lw=lw, ls=ls,
                                     color=colour, alpha=alpha, zorder=z, shrinkA=6, shrinkB=6))
    placement = report.get("placement") or {}
    hosts = sorted(set(placement.values()))
    face = ({h: plt.get_cmap("Set3")(k % 12) for k, h in enumerate(hosts)} if 1 < len(hosts) < len(pos) else {})
    size = max(12, 400 / max(1, len(pos)) ** 0.5)
    for h in hosts if face else [None]:
        ids = [i for i in pos if h is None or placement.get(i) == h]
        ax.scatter([pos[i][0] for i in ids], [pos[i][1] for i in ids], s=size, zorder=4,
                   color=face.get(h, "0.85"), edgecolors="k", linewidths=0.8)
    if len(pos) <= max_labels:
        col = {i: groups.index(specs[i].block.group) for i in pos}
        for i, (x, y) in pos.items():
            w = specs[i].block.hi - specs[i].block.lo
            dx = x - col[i]
            side_ = (np.sign(dx) if abs(dx) > 1e-9 else -1 if col[i] == 0 else 1 if col[i] == len(groups) - 1 else 0)
            ax.annotate(f"{i}" + (f" ({w} units)" if w > 1 else ""), (x, y), textcoords="offset points",
                        xytext=(10 * side_, 0 if side_ else 9), ha={-1: "right", 0: "center", 1: "left"}[int(side_)],
                        va="center" if side_ else "bottom", fontsize=7, zorder=5,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
    count = {g: sum(1 for s in specs.values() if s.block.group == g) for g in groups}
    ax.set_xticks(range(len(groups)), [f"{g}\n({count[g]} node{'s' if count[g] > 1 else ''})" for g in groups])
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(*((-0.02, 1.02) if tall > 1 else (0.2, 0.8)))
    ax.set_xlabel("column: group (layer)")
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    head = (f"locality: {report.get('nodes', len(specs))} nodes, {report.get('edges', 0)} of "
            f"{report.get('legal_edges', 0)} legal edges used, {report.get('messages', 0)} messages, "
            f"{len(viol)} violation{'s' if len(viol) != 1 else ''}")
    fig.suptitle(head + (f"\n{title}" if title else ""), fontsize=10, color="C3" if viol else "k")
    handles = [Line2D([], [], color=kind_colour(k, others), lw=2, label=KINDS.get(k, f"{k}: message kind"))
               for k in sorted(per_kind, key=lambda k: (k not in KINDS, k))]
    if any(n == 0 for n in (counts.get(e, 0) for e in edges)):
        handles.append(Line2D([], [], color="0.6", ls=":", lw=1, label="declared, no message"))
    if bad:
        handles.append(Line2D([], [], color="C3", lw=2.5, label="violation"))
    handles += [Line2D([], [], marker="o", ls="", mfc=face[h], mec="k", label=f"host {h}") for h in hosts if face]
    if handles:
        foot.legend(handles=handles, loc="upper center", ncol=min(4, len(handles)), fontsize=8, frameon=False,
                  title="edge colour: message kind (width grows with the count)", title_fontsize=8)
    side.axis("off")
    foot.axis("off")
    lines = ["messages per kind:"] + [f"  {k}: {n}" for k, n in sorted(per_kind.items())]
    if report.get("note"):
        lines += [report["note"][:60]]
    coord = report.get("coordinator", {})
    lines += ["", f"coordinator -> nodes: {sum(coord.values())} messages"]
    lines += [f"  {k}: {n}" for k, n in sorted(coord.items())] + ["global signals (nodes reached):"]
    lines += [f"  {k}: {n}" for k, n in report.get("globals", {}).items()]
    lines += ["boundary signals:"] + [f"  {k} -> {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
                                      for k, v in report.get("boundary", {}).items()]
    lines += ["", f"violations: {len(viol)}"] + [f"  {v['src']} -> {v['dst']}: {v['why']}"[:60] for v in viol[:10]]
    side.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5, color="C3" if viol else "k",
              transform=side.transAxes)
    fig.tight_layout()
    if len(edges) <= 12:  # few edges: each one's kind and message count at its arc's midpoint
        inv = ax.transData.inverted()
        for (a, b, kind) in sorted(edges):
            p, q = ax.transData.transform(pos[a]), ax.transData.transform(pos[b])
            d = q - p
            mid = (p + q) / 2 + 0.5 * rad[(a, b, kind)] * np.array([d[1], -d[0]])
            ax.annotate(f"{kind} x{counts.get((a, b, kind), 0)}", inv.transform(mid), ha="center", va="center",
                        fontsize=7, zorder=6, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.7", alpha=0.9))
    fig.savefig(path, dpi=100)
    plt.close(fig)
