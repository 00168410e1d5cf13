"""The Hamiltonian echo experiments (docs/algorithms.md §10; `train` trains, with checkpoints and recovery, and
experiments/echo.py audits):

  two-mass       §13 T3's system learns k12 from a teacher with k12* = 1.5 (phi_2 of the same system from the same
                 initial state), starting at 0.7: the loss and k12 per epoch; plots of phi_2 against the target
                 before and after, and of the echo returning (the forward trajectory and the echoes at 0, +eps, -eps)
  chain          a chain of masses driven on its first learns every spring constant so that its last mass follows
                 a teacher chain's; the audit (RHEL against BPTT) at the start; trajectories before and after
  hru-sequence   a Hamiltonian recurrent layer with a readout classifies sequences (UEA BasicMotions when the aeon
                 wheel's data are installed, else the synthetic stand-in), RHEL against a paired BPTT run, per seed
                 (`echo.seeds`)

Each writes metrics.json (the training metrics and the experiment's own checks) and its plots into the results
folder.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from cluster.truth.echo import System, simulate
from cluster.inprocess import ReferenceEngine
from cluster.launch import model_from, protocol_from
from experiments.audit import run_audit
from experiments.echo import run_echo_audit
from experiments.results import prepare, pyplot, write_json
from experiments.sequences import TEACHER_K12, load_sequences, teacher_of
from experiments.train import run_train
from protocols.base import Phase
from protocols.rhel import EchoPhase


def _train(cfg, out_dir: str) -> tuple:
    """(what the training run's metrics.json holds, its final parameters)."""
    final = run_train(cfg, out_dir, progress=True)["final_params"]
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return json.load(f), final


def _trajectory(model, params, x, T):
    """Output positions (T, B, d) of the centralised leapfrog (the plots' curves)."""
    out = System(model).out
    _, states = simulate(model, params, x, None, T, record=True, loss=False)
    return states[1:, :, 0, out]


def _plot_follow(path, t, target, before, after, title):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, target, "k", lw=2.5, alpha=0.35, label="target (teacher)")
    ax.plot(t, before, "C3--", lw=1, label="before")
    ax.plot(t, after, "C0", lw=1, label="after")
    ax.set_xlabel("t")
    ax.set_ylabel("output position")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_echo(path, model, params, x, y, T, eps, proto):
    """The forward pass's positions and the echoes' (ε = 0, ±eps), the echoes read backwards in time."""
    eng = ReferenceEngine(model, proto)
    eng.set_params(params)
    eng.set_batch(x, y)
    eng.begin()
    fwd = torch.cat(eng.run_phase(Phase("forward", T), record_states=True)["states"], -1)[:, 0, 0]
    echoes = {}
    for name, copies in (("echo, eps = 0", (0.0,)), (f"echoes at +-{eps:g}", (1.0, -1.0))):
        st = torch.cat(eng.run_phase(EchoPhase("echo", T, eps, "forward", copies=copies),
                                     record_states=True)["states"], -1)[:, :, 0]
        echoes[name] = st.flip(0)  # echo step k sits at forward time T - k
    h = model.dt
    t = -T * h + h * torch.arange(T + 1)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for j in range(fwd.shape[1]):
        axes[0].plot(t, fwd[:, j], lw=2.5, alpha=0.35, label=f"forward, phi_{j + 1}")
        axes[0].plot(t, echoes["echo, eps = 0"][:, 0, j], "--", lw=1, label=f"echo (eps 0), phi_{j + 1}")
    axes[0].set_xlabel("forward time t")
    axes[0].set_title("the unnudged echo retraces the forward pass")
    axes[0].legend(fontsize=7)
    pm = echoes[f"echoes at +-{eps:g}"]
    B = x.shape[0]
    for j in range(fwd.shape[1]):
        axes[1].plot(t, pm[:, 0, j] - fwd[:, j], label=f"+eps echo - forward, phi_{j + 1}")
        axes[1].plot(t, pm[:, B, j] - fwd[:, j], "--", label=f"-eps echo - forward, phi_{j + 1}")
    axes[1].set_xlabel("forward time t")
    axes[1].set_title(f"nudged echoes (eps = {eps:g}) part from it, oppositely")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return float((echoes["echo, eps = 0"][0, 0] - fwd[0]).abs().max())


def run_two_mass(cfg, out_dir: str) -> dict:
    prepare(out_dir, cfg)
    model = model_from(cfg)
    data = load_sequences(cfg)
    res, final = _train(cfg, os.path.join(out_dir, "train"))
    p0 = model.init_params(cfg.seed)
    T, h = cfg.T, cfg.dt
    t = (-T * h + h * torch.arange(1, T + 1)).numpy()
    _plot_follow(os.path.join(out_dir, "two-mass.png"), t, data.y_train[0, :, 0],
                 _trajectory(model, p0, data.x_train, T)[:, 0, 0], _trajectory(model, final, data.x_train, T)[:, 0, 0],
                 f"two masses: k12 {float(p0['k12']):.2f} -> {float(final['k12']):.4f} (teacher {TEACHER_K12})")
    back = _plot_echo(os.path.join(out_dir, "echo.png"), model, p0, data.x_train, data.y_train, T, 0.5,
                      protocol_from(cfg))
    k12 = float(final["k12"])
    metrics = {"k12_start": float(p0["k12"]), "k12_final": k12, "k12_teacher": TEACHER_K12,
               "loss_start": res["initial_loss"], "loss_final": res["final_loss"],
               "loss_ratio": res["initial_loss"] / max(res["final_loss"], 1e-300), "echo_error": back,
               "checks": {"loss_down_100x": res["initial_loss"] >= 100 * res["final_loss"],
                          "k12_within_1e-2": abs(k12 - TEACHER_K12) <= 1e-2}, "train": res}
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    print(f"two-mass: k12 {metrics['k12_start']:.3f} -> {k12:.5f} (teacher {TEACHER_K12}), loss "
          f"{metrics['loss_start']:.4g} -> {metrics['loss_final']:.4g} ({metrics['loss_ratio']:.3g}x) -> {out_dir}",
          file=sys.stderr)
    return metrics


def run_chain(cfg, out_dir: str) -> dict:
    prepare(out_dir, cfg)
    audit = run_audit(cfg, os.path.join(out_dir, "audit"))
    res, final = _train(cfg, os.path.join(out_dir, "train"))
    model = model_from(cfg)
    data = load_sequences(cfg)
    p0 = model.init_params(cfg.seed)
    T, h = cfg.T, cfg.dt
    t = (h * torch.arange(1, T + 1)).numpy()
    _plot_follow(os.path.join(out_dir, "chain.png"), t, data.y_test[0, :, 0],
                 _trajectory(model, p0, data.x_test[:1], T)[:, 0, 0], _trajectory(model, final, data.x_test[:1], T)[:, 0, 0],
                 f"{cfg.sizes[1]}-mass chain, last mass on a test force")
    teacher = teacher_of(cfg).init_params(0)
    springs = {k: (final[k] - teacher[k]).abs().max().item() for k in ("K", "k_end")}
    metrics = {"rhel_vs_bptt_rel_l2": audit["total"]["rel_l2"], "rhel_vs_bptt_cosine": audit["total"]["cosine"],
               "echo_error": audit["echo_error"], "locality_violations": len(audit["locality"]["violations"]),
               "loss_start": res["initial_loss"], "loss_final": res["final_loss"],
               "test_loss_start": res["epochs"][0]["test"]["loss"], "test_loss_final": res["epochs"][-1]["test"]["loss"],
               "loss_ratio": res["initial_loss"] / max(res["final_loss"], 1e-300), "spring_error_max": springs,
               "checks": {"rhel_equals_bptt_1e-9": audit["total"]["rel_l2"] <= 1e-9,
                          "loss_down_10x": res["initial_loss"] >= 10 * res["final_loss"]}, "train": res}
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    print(f"chain: RHEL vs BPTT rel_l2 {metrics['rhel_vs_bptt_rel_l2']:.2e}; loss {metrics['loss_start']:.4g} -> "
          f"{metrics['loss_final']:.4g} ({metrics['loss_ratio']:.3g}x), test {metrics['test_loss_start']:.4g} -> "
          f"{metrics['test_loss_final']:.4g} -> {out_dir}", file=sys.stderr)
    return metrics


def run_hru_sequence(cfg, out_dir: str) -> dict:
    prepare(out_dir, cfg)
    runs = []
    for seed in cfg.echo.seeds:
        c = cfg.replace(seed=int(seed), bptt_baseline=True)
        res, _ = _train(c, os.path.join(out_dir, f"seed{seed}"))
        audit = run_echo_audit(c.replace(eps=cfg.echo.audit_eps, engine="reference"),
                               os.path.join(out_dir, f"seed{seed}", "audit"), quiet=True)
        runs.append({"seed": int(seed), "rhel_test_accuracy": res["test_accuracy"],
                     "bptt_test_accuracy": res["bptt_test_accuracy"],
                     "audit_eps": cfg.echo.audit_eps,
                     "audit_cosine_min": min(v["cosine"] for v in audit["per_tensor"].values() if v["cosine"] == v["cosine"]),
                     "audit_norm_ratio": {k: v["norm_ratio"] for k, v in audit["per_tensor"].items()},
                     "dataset": res["dataset"], "synthetic": res["synthetic"]})
        print(f"hru-sequence seed {seed}: RHEL {res['test_accuracy']:.3f}, BPTT {res['bptt_test_accuracy']:.3f}",
              file=sys.stderr)
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("rhel_test_accuracy", "bptt_test_accuracy")}
    metrics = {"runs": runs, "mean": mean, "gap_points": 100 * (mean["bptt_test_accuracy"] - mean["rhel_test_accuracy"]),
               "checks": {"within_2_points": abs(mean["bptt_test_accuracy"] - mean["rhel_test_accuracy"]) <= 0.02,
                          "cosine_0.9999": all(r["audit_cosine_min"] >= 0.9999 for r in runs)}}
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    print(f"hru-sequence ({runs[0]['dataset']}{', synthetic' if runs[0]['synthetic'] else ''}): RHEL "
          f"{mean['rhel_test_accuracy']:.3f}, BPTT {mean['bptt_test_accuracy']:.3f} over seeds {list(cfg.echo.seeds)} "
          f"-> {out_dir}", file=sys.stderr)
    return metrics


EXPERIMENTS = {"two-mass": run_two_mass, "chain": run_chain, "hru-sequence": run_hru_sequence}
