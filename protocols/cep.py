"""`cep`, continual EP (Ernoult et al. 2020; docs/algorithms.md §6): free phase at fixed theta -> s0; nudged at beta from
s0, and at every nudged step every node changes the tensors it holds:

    theta_{t+1} = theta_t - lr (G(s_{t+1}) - G(s_t)) / beta

applied at step t+1, once the node has its neighbours' states tagged t+1 and before it computes s_{t+2} (so the
transition t+1 -> t+2 uses theta_{t+1}); the last transition's change is applied at the phase's exit. A synapse
needs only the pre- and post-synaptic states at t and t+1: no free-phase memory. Both ends of a symmetric edge
apply the same change. g_hat (the audit's estimate) = sum_t (G(s_{t+1}) - G(s_t)) / beta, each term at the weights
of its step; lr = 0 telescopes it to `ep`'s. Plain SGD by its theorem: no optimiser step at the end of a batch.
"""
from protocols.base import Phase, Protocol, add


class ContinualEP(Protocol):
    name = "cep"
    has_step_rule = True
    updates_in_phases = True
    checks = ("optimizer", "momentum")
    models = ("energy", "prototypical")  # symmetric nets: its theorem needs an energy

    def validate(self, beta, optimizer="sgd", momentum=0.0, **settings) -> None:
        super().validate(beta)
        if optimizer != "sgd":
            raise ValueError(f"optimizer: cep updates by plain SGD at every nudged step (its theorem); got "
                             f"{optimizer!r} (set optimizer=sgd)")
        if momentum:
            raise ValueError(f"momentum: cep updates by plain SGD at every nudged step (its theorem); got {momentum} (set momentum=0)")

    def program(self, beta, T1, T2):
        return Phase("free", T1), Phase("nudged", T2, beta, "free")

    def on_step(self, phase, t, mem, G):
        """At nudged step t: g_t = (G(s_t) - G(s_{t-1})) / beta from this step's and the last step's G."""
        if phase.beta == 0:
            return mem, None
        now = G(1.0 / phase.beta)
        last = mem.get("last") if t else None
        mem = {**mem, "last": now}
        if last is None:
            return mem, None
        g = {k: now[k] - last[k] for k in now}
        return {**mem, "acc": add(mem.get("acc"), g)}, g

    def on_exit(self, phase, mem, G):
        return {k: v for k, v in mem.items() if k != "last"}


PROTOCOL = ContinualEP()
