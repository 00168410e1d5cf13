"""The model families, declared once each and found by discovery: every module of this package that defines `FAMILY`.

A family says which models are its own (the nodes/ modules whose BUILDERS make them, and the `physics` of a model
object built in Python), what it brings to the one pipeline (its training hooks, its audit, the checks of its config
keys) and what it adds to the config (keys of the generic sections, sections of its own, experiment commands). The
pipeline, the config and the API ask the registry; none of them names a family.

Code is referred to by "module:attribute" strings, resolved when first used (`resolve`): a family's declaration
imports nothing heavier than dataclasses, so the config can read every family's settings without importing the
training code that itself reads the config.

One family (`default = True`, the layered nets) takes every model no other family claims.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field


def resolve(ref):
    """A "module:attribute" reference's object (a callable or a class passes through)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Command:
    """An experiment command (`python -m experiments NAME`): `run(cfg, out_dir) -> metrics` and its default config
    (a name in experiments/configs/)."""

    run: str
    config: str
    doc: str = ""


@dataclass(frozen=True)
class Family:
    name: str
    training: str                       # "module:attr": (cfg, model, protocol) -> an experiments/hooks.Training
    audit: str                          # "module:attr": (cfg, out_dir, sets, quiet, model, protocol) -> report
    nodes: tuple = ()                   # the nodes/ modules whose BUILDERS are its models
    physics: tuple = ()                 # Model.physics of its model objects
    default: bool = False               # takes every model no other family claims
    validate: str | None = None         # "module:attr": (cfg, protocol) -> None, raising ConfigError: its keys' checks
    describe: str | None = None         # "module:attr": model object -> the config keys that say how it was built
    settings: dict = field(default_factory=dict)   # {generic section: dataclass of the keys it adds there}
    sections: dict = field(default_factory=dict)   # {section name: dataclass}: sections of its own
    commands: dict = field(default_factory=dict)   # {command name: Command}
    defaults: dict = field(default_factory=dict)   # {pipeline command: its default config}, where a family ships it
    sweep_keys: tuple = ()              # audit report keys a sweep point keeps
    headline: str | None = None         # "module:attr": audit report -> lines printed after the audit's own
    gate_keys: tuple = ()               # training metrics a comparison table reports beside the accuracy

    def hook(self, name: str):
        """One of its code references, resolved."""
        return resolve(getattr(self, name))

    def owns_name(self, model_name: str) -> bool:
        from nodes.models import module_of
        return module_of(model_name) in self.nodes

    def owns(self, model) -> bool:
        return model.physics in self.physics


def _discover() -> tuple:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        fam = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if fam is not None:
            found.append(fam)
    defaults = [f.name for f in found if f.default]
    if len(defaults) != 1:
        raise RuntimeError(f"experiments/families: exactly one family takes the other models, found {defaults}")
    names = [c for f in found for c in f.commands]
    if len(set(names)) != len(names):
        raise RuntimeError(f"experiments/families: a command is declared twice in {names}")
    return tuple(sorted(found, key=lambda f: f.default))  # the default family last


FAMILIES = _discover()


def family_of(model=None, name: str | None = None) -> Family:
    """The family of a model object (by its physics), else of a config's model name (by the module that builds it)."""
    for fam in FAMILIES:
        if fam.default or (fam.owns(model) if model is not None else fam.owns_name(name)):
            return fam
    raise LookupError(f"no family for model {name!r}")  # unreachable: the default family takes every model


def commands() -> dict:
    """{command name: Command} of every family."""
    return {name: cmd for fam in FAMILIES for name, cmd in fam.commands.items()}


def default_configs() -> dict:
    """{command: default config name}: the families' experiments' and the pipeline commands' they ship."""
    out = {name: cmd.config for name, cmd in commands().items()}
    for fam in FAMILIES:
        out.update(fam.defaults)
    return out
