"""`hep-fast`, holomorphic EP with the conjugate runs folded (docs/algorithms.md §7 "Fast variant"): with real parameters
and inputs, G(s_{conj beta}) = conj G(s_beta), so of the N points only the real ones (+|beta|, and -|beta| for even
N) run, in real arithmetic, and the complex ones k = 1 .. ceil(N/2) - 1 run once each, counted twice:
    g_hat = Re( (1/N) [ sum_{real beta_k} G(s_{beta_k}) / beta_k + 2 sum_{k=1}^{ceil(N/2)-1} G(s_{beta_k}) / beta_k ] )
equal to `hep` to rounding with (N + 1)//2 - 1 complex and one or two real nudged runs (6 instead of 10 at N = 10).
"""
from protocols.base import Phase
from protocols.hep import HolomorphicEP, points


class HolomorphicEPFast(HolomorphicEP):
    name = "hep-fast"

    def program(self, beta, T1, T2):
        N = self.N
        bs = points(beta, N)
        phases = [Phase("plus", T2, bs[0], "free", coef=1 / (N * bs[0]))]
        if N % 2 == 0:
            phases.append(Phase("minus", T2, bs[N // 2], "free", coef=1 / (N * bs[N // 2])))
        phases += [Phase(f"k{k}", T2, bs[k], "free", complex=True, coef=2 / (N * bs[k])) for k in range(1, (N + 1) // 2)]
        return (Phase("free", T1),) + tuple(phases)


PROTOCOL = HolomorphicEPFast()
