"""`audit`: the gradient and locality audit of a protocol on an engine against its truth, whatever the model.

The model's family (experiments/families/ picks it: from the model object, else from the config's model name or a
replayed bundle's) runs its own audit and writes out_dir: audit.npz (the pinned bundle, docs/algorithms.md §1),
audit.json and its plots. Unless quiet, the audit's last line is its headline: cosine and relative L2 error of the
estimate against BPTT over every tensor, then the family's own figures (`headline`, e.g. a scalar derivative).
"""
from __future__ import annotations

from experiments.families import family_of
# the layered nets' audit names, imported from here by their older callers (sweep, tests)
from experiments.layered_audit import REPLAY_KEYS, NotConverged, audit_batch, replay_config
from experiments.replay import bundle_model

__all__ = ["run_audit", "headline", "REPLAY_KEYS", "NotConverged", "audit_batch", "replay_config"]


def run_audit(cfg, out_dir: str, sets=(), quiet: bool = False, model=None, protocol=None,
              figures: bool = True) -> dict:
    """The audit of cfg's protocol (or `protocol`, an object) on cfg's engine; writes out_dir; returns the report.
    `sets`: the command line's --set items that may change a replayed bundle's settings; `figures`: draw the
    audit's pictures (a sweep, which keeps only each point's numbers, does not)."""
    name = (cfg.replay and bundle_model(cfg.replay)) or cfg.model
    fam = family_of(model) if model is not None else family_of(name=name)
    report = fam.hook("audit")(cfg, out_dir, sets, quiet, model, protocol, figures=figures)
    if not quiet:
        extra = fam.hook("headline")
        print("\n".join([headline(report), *(extra(report) if extra is not None else [])]))
    return report


def headline(report: dict) -> str:
    """The audit's figure: the estimate against BPTT over all its tensors (audit.json's `total`)."""
    t, n = report["total"], len(report["per_tensor"])
    return (f"audit: cosine {t['cosine']:.6f}, rel. L2 {t['rel_l2']:.2e}, norm ratio {t['norm_ratio']:.4f} vs BPTT "
            f"({n} tensor{'s' if n != 1 else ''})")
