"""`audit`: freeze the weights and a batch, run the protocol on the engine, compare with BPTT (§12).

Writes `audit.npz` (the pinned bundle, ALGORITHMS.md §1) and `audit.json` (total and per-tensor cosine,
rel_l2, norm_ratio, sign_agreement; locality; replica drift; with steps=true the GDU metrics and a PNG).
`replay=BUNDLE.npz` re-runs on another bundle's parameters, batch and settings.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from cluster.audit import compare, gdu_metrics, read_bundle, write_bundle
from cluster.bptt import bptt_grad, bptt_steps
from cluster.locality import locality_report
from cluster.runtime import make_engine, model_from
from experiments.config import ConfigError
from experiments.datasets import load_dataset, one_hot
from experiments.results import prepare, pyplot, write_json
from experiments.train import check_data
from protocols import get_protocol
from protocols.base import run_schedule

META_KEYS = ("model", "sizes", "activation", "protocol", "beta", "T1", "T2", "dt", "N", "seed")


def replay_config(cfg, sets=()):
    """Settings from a bundle's meta, then the command line's --set on top (granularity, transport, ...)."""
    if not os.path.isfile(cfg.replay):
        raise ConfigError("replay", f"no bundle file {cfg.replay!r}")
    try:
        bundle = read_bundle(cfg.replay)
    except Exception as err:  # a corrupt or foreign file
        raise ConfigError("replay", f"cannot read bundle {cfg.replay!r}: {err}") from None
    meta = bundle["meta"]
    data = cfg.to_dict()
    data.update({k: meta[k] for k in META_KEYS if k in meta})
    data["dtype"] = "float64"
    from experiments.config import Config, _build, _set_dotted, parse_value, validate
    for item in sets:
        k, v = item.split("=", 1)
        if k.strip() in ("granularity", "transport", "engine", "fabric.log", "fabric.split", "steps"):
            _set_dotted(data, k.strip(), parse_value(v))
    return validate(_build(Config, data)), bundle


def audit_batch(cfg, model):
    """The frozen batch: the first `batch` training samples of the dataset, and the seeded initial weights."""
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.test_fraction, cfg.data_path)
    check_data(cfg, ds)
    x = torch.from_numpy(ds.x_train[:cfg.batch])
    y = torch.from_numpy(one_hot(ds.y_train[:cfg.batch], ds.n_classes))
    return x, y, model.init_params(cfg.seed, torch.float64)


def run_audit(cfg, out_dir: str, sets=(), quiet: bool = False) -> dict:
    bundle = None
    if cfg.replay:
        cfg, bundle = replay_config(cfg, [a for a in sets if "=" in a])
    cfg = dataclasses.replace(cfg, dtype="float64")
    model = model_from(cfg)
    if bundle is not None:
        x, y, params = bundle["x"], bundle["y"], {k: v.double() for k, v in bundle["param"].items()}
        if set(params) != set(model.param_shapes()) or any(
                tuple(params[k].shape) != s for k, s in model.param_shapes().items()):
            raise ConfigError("replay", "the bundle's parameters do not match its sizes")
    else:
        x, y, params = audit_batch(cfg, model)
    protocol = get_protocol(cfg.protocol)
    beta = protocol.batch_beta(cfg.beta, np.random.default_rng(cfg.seed))
    prepare(out_dir, cfg)
    engine = make_engine(cfg, model)
    try:
        engine.set_params(params)
        engine.set_batch(x, y)
        phases = run_schedule(protocol, engine, beta, cfg.T1, cfg.T2, record_grads=cfg.steps)
        estimate = engine.update(beta, apply=False)
        logs = engine.message_logs() if engine.name == "fabric" else {}
        drift = engine.replica_drift() if engine.name == "fabric" else {}
        blocks = list(engine.blocks.values()) if engine.name == "fabric" else []
    finally:
        engine.close()
    truth = bptt_grad(model, params, x, y, cfg.T1)
    report = compare(estimate, truth)
    report["beta_used"] = beta
    report["residuals"] = {k: v.get("residual") for k, v in phases.items()}
    report["locality"] = (locality_report(model, blocks, logs) if logs
                          else {"messages": 0, "violations": [], "note": "reference engine: no fabric"})
    report["replica_drift"] = drift
    meta = {k: getattr(cfg, k) for k in META_KEYS}
    meta.update(beta_used=beta, granularity=cfg.granularity, transport=cfg.transport, engine=cfg.engine,
                dtype="float64")
    est_steps = bptt_s = None
    if cfg.steps:
        est_steps = phases[protocol.nudged_phase().name]["grad_steps"]
        bptt_s = bptt_steps(model, params, x, y, cfg.T1, cfg.T2)
        report["steps"] = gdu_metrics(est_steps, bptt_s)
        plot_gdu(os.path.join(out_dir, "gdu.png"), est_steps, bptt_s)
    write_bundle(os.path.join(out_dir, "audit.npz"), meta, x, y, params, estimate, truth, est_steps, bptt_s)
    write_json(os.path.join(out_dir, "audit.json"), report)
    if not quiet:
        t = report["total"]
        print(f"audit {cfg.protocol} beta={beta:g} on {cfg.engine}/{cfg.granularity}/{cfg.transport}: "
              f"cosine {t['cosine']:.6f}, rel_l2 {t['rel_l2']:.3e}, norm_ratio {t['norm_ratio']:.4f}, "
              f"locality violations {len(report['locality']['violations'])} "
              f"({report['locality']['messages']} messages) -> {out_dir}")
    return report


def plot_gdu(path: str, est_steps: dict, bptt_s: dict, per_tensor: int = 3) -> None:
    """Cumulative EP (dashed) vs BPTT (solid) for a few elements of every tensor (Ernoult et al. 2019)."""
    plt = pyplot()
    names = list(bptt_s)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    for ax, k in zip(axes[0], names):
        e = est_steps[k].reshape(len(est_steps[k]), -1).numpy()
        b = bptt_s[k].reshape(len(bptt_s[k]), -1).numpy()
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
