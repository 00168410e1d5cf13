"""`hep`, holomorphic EP with N points (Laborieux & Zenke 2022; docs/algorithms.md §1 and §7): free phase -> s0; then N
nudged phases, each from s0 at beta_k = |beta| exp(2 pi i k / N), k = 0..N-1, in complex arithmetic (the real
points +-|beta| in real arithmetic):
    g_hat = Re( (1/N) sum_k G(s_{beta_k}) / beta_k )
at every synapse the pre x post correlation demodulated by 1/beta_k (a global clock signal), accumulated over the N
runs, real part at the end. Exact up to aliasing: g_hat - dL/dtheta = O(|beta|^N). N = 2 is `ep-symmetric`.
Every operation on the complex states must be holomorphic: `validate` admits only the holomorphic activations.
"""
import cmath

from nodes.activations import HOLOMORPHIC
from dataclasses import dataclass

from protocols.base import Phase, Protocol


def point(beta, k: int, N: int):
    """beta_k = |beta| exp(2 pi i k / N); the real ones (k = 0 and, for even N, k = N/2) as exact reals."""
    if k == 0:
        return abs(beta)
    if 2 * k == N:
        return -abs(beta)
    return abs(beta) * cmath.exp(2j * cmath.pi * k / N)


def points(beta, N: int) -> list:
    return [point(beta, k, N) for k in range(N)]


@dataclass(frozen=True)
class HolomorphicSettings:
    N: int = 2               # points on the circle of complex beta


class HolomorphicEP(Protocol):
    name = "hep"
    Settings = HolomorphicSettings
    checks = ("activation",)

    def validate(self, beta, N=2, activation="sigmoid", **settings) -> None:
        super().validate(beta)
        if not isinstance(N, int) or isinstance(N, bool) or N < 2:
            raise ValueError(f"N: {self.name} needs N >= 2 points on the circle (N = 1 is protocol ep), got {N!r}")
        if activation not in HOLOMORPHIC:
            raise ValueError(f"activation: {self.name} needs a holomorphic activation ({', '.join(HOLOMORPHIC)}); "
                             f"{activation!r} is not (a non-holomorphic step biases the estimate at every |beta|)")

    @property
    def N(self) -> int:
        return int(self.settings["N"])

    def fallback(self, beta, T1, T2):
        """N = 2 (real runs at +-|beta|, `ep-symmetric`'s estimate): no complex state left to diverge."""
        return self.configured(N=2).program(beta, T1, T2) if self.N > 2 else None

    def program(self, beta, T1, T2):
        N = self.N
        return (Phase("free", T1),) + tuple(
            Phase(f"k{k}", T2, b, "free", complex=isinstance(b, complex), coef=1 / (N * b))
            for k, b in enumerate(points(beta, N)))


PROTOCOL = HolomorphicEP()
