"""Learning protocols, found by discovery: every module of this package that defines `PROTOCOL` (a
protocols.base.Protocol) registers it under its `name`. Adding a protocol is adding one file."""
from __future__ import annotations

import importlib
import pkgutil

from protocols.base import Phase, Protocol


def _discover() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        p = getattr(importlib.import_module(f"{__name__}.{info.name}"), "PROTOCOL", None)
        if isinstance(p, Protocol):
            if p.name in found:
                raise RuntimeError(f"protocols: two modules define protocol {p.name!r}")
            found[p.name] = p
    return found


PROTOCOLS = _discover()


def get_protocol(name_or_protocol) -> Protocol:
    """A registered protocol by name, or a Protocol object itself (one defined outside protocols/)."""
    if isinstance(name_or_protocol, Protocol):
        return name_or_protocol
    if name_or_protocol not in PROTOCOLS:
        raise ValueError(f"protocol: unknown protocol {name_or_protocol!r}; expected one of {tuple(PROTOCOLS)}")
    return PROTOCOLS[name_or_protocol]


__all__ = ["Phase", "Protocol", "PROTOCOLS", "get_protocol"]
