"""`cvf`, continual VF (Ernoult et al. 2020; docs/algorithms.md §6): `vf`'s pairing at every nudged step, so that no
free state is kept: at step t+1 every node changes what it holds by its own post-synaptic change times the
pre-synaptic signals of step t,

    W_n += (lr / beta) (s^{t+1}_{n+1} - s^t_{n+1}) a^t_n^T,   b_n += (lr / beta)(s^{t+1}_{n+1} - s^t_{n+1}),
    B_n += (lr / beta) (s^{t+1}_n - s^t_n) a^t_{n+1}^T          (batch means)

applied before s_{t+2} is computed (the last one at the phase's exit), by plain SGD with the run's `lr` (B{n} takes
the lr entry of its layer pair n, as W{n} and b{n} do). g_hat (the audit's estimate) is the sum of the per-step
gradients; at lr = 0 it differs from `vf`'s by O(beta). `random_sign` draws the sign of beta per batch.
"""
from protocols.base import add
from protocols.cep import ContinualEP
from protocols.vf import SignSettings


class ContinualVF(ContinualEP):
    name = "cvf"
    Settings = SignSettings
    models = ("prototypical-asym",)

    def on_step(self, phase, t, mem, G):
        """At nudged step t: g_t = -(a_t - a_{t-1}) a_pre_{t-1}^T / beta, from this step's and the last step's
        signals."""
        if phase.beta == 0:
            return mem, None
        now = G.signals()
        last = mem.get("last") if t else None
        mem = {**mem, "last": now}
        if last is None:
            return mem, None
        g = G.outer(1.0 / phase.beta, now[0] - last[0], last[1])
        g = dict(g)  # evaluated now (the node applies it); summed as tensors, not re-multiplied at the estimate
        return {**mem, "acc": add(mem.get("acc"), g)}, g


PROTOCOL = ContinualVF()
