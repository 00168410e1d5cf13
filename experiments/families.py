"""The model families and what each brings to the one `train` and `audit` pipelines.

A family is picked from the model's declaration (a model object: `declares(model)`) or, before a model is built,
from the config's model name (`models`); the last family, the layered nets, takes every other model. Each family
gives its training hooks (`training(cfg, model, protocol)`: an experiments/hooks.Training) and its audit
(`audit(cfg, out_dir, sets, quiet, model, protocol) -> report`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from experiments.echo import run_echo_audit
from experiments.echo_train import EchoTraining
from experiments.layered import LayeredTraining
from experiments.layered_audit import run_layered_audit
from nodes.hamiltonian import HAMILTONIAN_MODELS


@dataclass(frozen=True)
class Family:
    name: str
    models: tuple                      # the config names of its models (() : every name no other family claims)
    declares: Callable                 # model object -> whether it belongs to the family
    training: Callable                 # (cfg, model, protocol object) -> Training
    audit: Callable                    # (cfg, out_dir, sets, quiet, model, protocol) -> the audit's report


FAMILIES = (
    Family("hamiltonian", HAMILTONIAN_MODELS, lambda model: model.echo is not None, EchoTraining, run_echo_audit),
    Family("layered", (), lambda model: True, LayeredTraining, run_layered_audit),
)


def family_of(model=None, name: str | None = None) -> Family:
    """The family of a model object, else of a config's model name."""
    for fam in FAMILIES:
        if (fam.declares(model) if model is not None else (not fam.models or name in fam.models)):
            return fam
    raise LookupError(f"no family for model {name!r}")  # unreachable: the last family takes every model
