"""Learning protocols: a phase schedule plus the local estimator each node applies (ALGORITHMS.md §1)."""
from protocols.base import Phase, Protocol
from protocols.ep import PROTOCOL as EP
from protocols.ep_random_sign import PROTOCOL as EP_RANDOM_SIGN
from protocols.ep_symmetric import PROTOCOL as EP_SYMMETRIC

PROTOCOLS = {p.name: p for p in (EP, EP_SYMMETRIC, EP_RANDOM_SIGN)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol: unknown protocol {name!r}; expected one of {tuple(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["Phase", "Protocol", "PROTOCOLS", "get_protocol"]
