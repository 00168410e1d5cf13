"""The model registry: a config's `model` name to the builder that declares it, found by discovery.

Every module of nodes/ that defines `BUILDERS = {name: builder}` registers its models; a builder takes the run's
settings (an object with the config's attributes: sizes, activation, dt, ...) and returns a nodes.graph.Model.
Adding a model kind is adding one module (or one entry to a module's BUILDERS); generic code asks `build(cfg)`.
"""
from __future__ import annotations

import importlib
import pkgutil

import nodes


def _discover() -> tuple:
    found, modules = {}, {}
    for info in sorted(pkgutil.iter_modules(nodes.__path__), key=lambda m: m.name):
        if info.name == "models" or info.name.startswith("_"):
            continue
        for name, builder in getattr(importlib.import_module(f"nodes.{info.name}"), "BUILDERS", {}).items():
            if name in found:
                raise RuntimeError(f"nodes: two modules build model {name!r}")
            found[name], modules[name] = builder, f"nodes.{info.name}"
    return found, modules


BUILDERS, _MODULES = _discover()
MODEL_NAMES = tuple(BUILDERS)


def module_of(name: str) -> str | None:
    """The nodes/ module whose BUILDERS declare model `name` (None: no such model)."""
    return _MODULES.get(name)


def build(cfg):
    """The Model that cfg.model names, built from the run's settings."""
    if cfg.model not in BUILDERS:
        raise ValueError(f"model: unknown model {cfg.model!r}; expected one of {MODEL_NAMES}")
    return BUILDERS[cfg.model](cfg)
