"""Protocols as data: a schedule of phases and the coefficients of the local estimator.

Every estimator of §1 is a linear combination of G at saved states:  g_hat = sum_k c_k(beta) G(s_k).
Each node evaluates it on the tensors it holds from what it saw (its own state and its neighbours'
messages at each saved state); the coordinator only walks the schedule and passes beta.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Phase:
    """Run `steps` ("T1" or "T2") steps at beta_sign * beta from `start` ("zero" or a saved state's name),
    and save the final state as `name`."""

    name: str
    steps: str
    beta_sign: int
    start: str


@dataclass(frozen=True)
class Protocol:
    name: str
    phases: tuple
    coefficients: Callable  # beta (signed, for this batch) -> {saved state: coefficient}
    random_sign: bool = False

    def batch_beta(self, beta: float, rng: np.random.Generator) -> float:
        """The beta of one batch; the random-sign protocol flips it with the run's seeded generator."""
        if self.random_sign:
            return float(beta) * (1.0 if rng.random() < 0.5 else -1.0)
        return float(beta)

    def steps_of(self, phase: Phase, T1: int, T2: int) -> int:
        return T1 if phase.steps == "T1" else T2

    def nudged_phase(self) -> Phase:
        """The first nudged phase (its step-wise updates form the GDU series)."""
        return next(p for p in self.phases if p.beta_sign != 0)


FREE = Phase("free", "T1", 0, "zero")


def run_schedule(protocol: Protocol, engine, beta: float, T1: int, T2: int, record_grads: bool = False) -> dict:
    """Walk the schedule on an engine (one call per phase); returns {phase name: what the phase returned}.

    With `record_grads`, the first nudged phase also returns the step-wise estimates (GDU series).
    """
    out = {}
    nudged = protocol.nudged_phase()
    for ph in protocol.phases:
        out[ph.name] = engine.run_phase(ph.name, protocol.steps_of(ph, T1, T2), ph.beta_sign * beta, ph.start,
                                        record_grads=record_grads and ph is nudged)
    return out
