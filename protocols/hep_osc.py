"""`hep-osc`, holomorphic EP with a continuously oscillating teaching signal (Laborieux & Zenke 2022's oscEP;
docs/algorithms.md §7 "Continuous oscillation"): no separate free phase. One phase from zero in complex arithmetic,
`periods` periods of N segments of T2 steps; in segment j every node nudges (only the output node has y) at
    beta_k = |beta| exp(2 pi i k / N),  k = j mod N,
derived from the phase's |beta|, the carried N and its own step counter (a clock, not a message), the state
carrying over from segment to segment. At the end of every segment each synapse accumulates G(s)/beta_k; then
    g_hat = Re( (1 / (N periods)) sum_segments G(s_end) / beta_k ).
With segments long enough to converge it equals `hep` (same N, |beta|). The free prediction is not a phase of its
own: it is the mean of the last period's segment-end states (their zeroth Fourier coefficient, s0 + O(|beta|^N)),
each node's own.
"""
from dataclasses import dataclass

from protocols.base import Phase, add
from protocols.hep import HolomorphicEP, point


@dataclass(frozen=True)
class ClockedPhase(Phase):
    """A phase whose beta is a clock: every node asks the protocol's step_beta(phase, t, beta) at each of its steps,
    segments of `period` steps."""

    period: int = 0

    @property
    def clocked(self) -> bool:
        return self.period > 0


@dataclass(frozen=True)
class OscSettings:
    N: int = 2               # points on the circle of complex beta
    periods: int = 3         # periods of the N-segment oscillation


class HolomorphicOsc(HolomorphicEP):
    name = "hep-osc"
    Settings = OscSettings
    has_step_rule = True     # a segment-end accumulation at a step inside the phase (no parameter change)

    def validate(self, beta, N=2, activation="sigmoid", periods=3, **settings) -> None:
        super().validate(beta, N=N, activation=activation)
        if not isinstance(periods, int) or isinstance(periods, bool) or periods < 1:
            raise ValueError(f"periods: {self.name} needs at least one period, got {periods!r}")

    @property
    def periods(self) -> int:
        return int(self.settings["periods"])

    def program(self, beta, T1, T2):
        return (ClockedPhase("osc", self.N * self.periods * T2, abs(beta), "zero", complex=True, period=T2),)

    def fallback(self, beta, T1, T2):
        """None: the nodes' clock carries N, so a diverged oscillation's samples are dropped, not re-run at N = 2."""
        return None

    def step_beta(self, phase, t, beta):
        return complex(point(beta, (t // phase.period) % self.N, self.N))

    def on_step(self, phase, t, mem, G):
        """At a segment's end (t a multiple of T2, t > 0; the phase's exit for the last), acc += G / (N P beta_k).
        Nothing in a phase without the clock (inference's free phase)."""
        if not phase.clocked or t == 0 or t % phase.period:
            return mem, None
        b = self.step_beta(phase, t - 1, phase.beta)  # the segment that just ended
        mem = {**mem, "acc": add(mem.get("acc"), G(1.0 / (self.N * self.periods * b)))}
        if t > (self.periods - 1) * self.N * phase.period:  # the last period: its mean state is the prediction
            s = G.state() / self.N
            mem["free"] = s if mem.get("free") is None else mem["free"] + s
        return mem, None

    def prediction(self, state, program):
        """The free prediction from the oscillation itself: the mean of the last period's N segment-end states, the
        zeroth Fourier coefficient of s(beta_k), = s0 + O(|beta|^N) when the segments converge (real part)."""
        return state["mem"]["free"].real


PROTOCOL = HolomorphicOsc()
