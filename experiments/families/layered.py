"""The layered nets (nodes/layered.py: prototypical, asymmetric and tied nets, vector-field graphs) under the
relaxation protocols (ep, its symmetric and random-sign forms, cep, hep, vf, cvf, aep, dyadic, the clamped rules):
the family that takes every model no other family claims."""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.errors import ConfigError
from experiments.families import Command, Family
from nodes.layered import FEEDBACK_INITS


@dataclass(frozen=True)
class LayeredNetSettings:
    feedback_init: str = "transpose"  # asymmetric nets: B{n} starts as W{n}^T, "independent", or "none" (feed-forward)
    angle: float = 0.0             # prototypical-asym: each B entry's sign flipped with probability (1 - cos psi) / 2


@dataclass(frozen=True)
class TradeoffSection:
    """`tradeoff` (experiments/tradeoff.py): the settings trained and the seeds."""
    cep_lr: list = field(default_factory=list)      # cep at each learning rate (a number or one per layer pair)
    cvf_angle: list = field(default_factory=list)   # cvf at each feedback angle psi (degrees)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    angle_batches: int = 4                          # training batches the update-BPTT angle is averaged over


def validate(cfg, protocol=None) -> None:
    """The layered keys: the feedback start, the feedback angle, a vector graph's sizes."""
    if cfg.feedback_init not in FEEDBACK_INITS:
        raise ConfigError("feedback_init", f"{cfg.feedback_init!r} is not one of {list(FEEDBACK_INITS)}")
    if not 0.0 <= cfg.angle <= 180.0:
        raise ConfigError("angle", f"must be in [0, 180] degrees, got {cfg.angle}")
    if cfg.model == "vector-graph" and (len(cfg.sizes) != 3 or not cfg.sizes[2] < cfg.sizes[1]):
        raise ConfigError("sizes", f"model vector-graph takes [inputs, units, outputs] with outputs < units, got "
                          f"{cfg.sizes!r}")


def describe(model) -> dict:
    """A net built in Python: its groups' sizes, name, activation and step are the config's."""
    return {"sizes": [g.size for g in model.groups], "model": model.name, "activation": model.activation,
            "dt": model.dt}


FAMILY = Family(
    name="layered",
    default=True,
    nodes=("nodes.layered",),
    training="experiments.layered:LayeredTraining",
    audit="experiments.layered_audit:run_layered_audit",
    validate=f"{__name__}:validate",
    describe=f"{__name__}:describe",
    settings={"net": LayeredNetSettings},
    sections={"tradeoff": TradeoffSection},
    commands={"tradeoff": Command("experiments.tradeoff:run_tradeoff", "cep-tradeoff",
                                  "cep at several learning rates and cvf at several feedback angles, trained per "
                                  "seed: final errors against the update-BPTT angle")},
    defaults={"compare": "hep-noise"},
    gate_keys=("dropped_samples", "hep_fallbacks"),
)
