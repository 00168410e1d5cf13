"""Hamiltonian models (docs/algorithms.md §10): units with a position phi and a momentum pi, unit masses,

    H(phi, pi; theta, u_t) = sum_i pi_i^2 / 2 + V(phi; theta, u_t),

integrated by position-Verlet leapfrog with step h = the model's `dt` (nodes/leapfrog.py). V is a sum of declared
parts, each a function of a node's own units and its neighbours' positions:

  springs   a Spring between dynamic groups (nodes/springs.py), W (dst, src) masked to the springs:
            1/2 sum_ij W_ij (phi_i - phi_j)^2                        dV/dW_ij = 1/2 (phi_i - phi_j)^2
  drive     Drives from the input group (and their biases): d = W u_t + b, entering the onsite potential
  onsite    per group (Echo.potential), with Local parameters `a` (stiffness), and for logcosh `w`, `c`:
            quadratic  1/2 a_i phi_i^2 - phi_i d_i                   dV/dd_i = -phi_i
            logcosh    1/2 a_i phi_i^2 + c_i log cosh(w_i phi_i + d_i) / w_i
                                                                     dV/dd_i = c_i tanh(z_i) / w_i,  z = w phi + d
                       dV/dw_i = c_i (tanh(z_i) phi_i / w_i - log cosh(z_i) / w_i^2),  dV/dc_i = log cosh(z_i) / w_i

The loss (Echo.loss) is a sum over the forward steps n = 1..T of l_n(phi_out,n) on the output group, per sample and
averaged over the batch:

  sq           l_n = h ||phi_n - y_n||^2                       (§13 T3: the trajectory's integral; HEB: the final
                                                                  step only, C = ||phi_T - y_T||^2)
  sin-sum      l_n = (sum_i sin phi_n,i)^2                     (§13 T4)
  sin-readout  l_n = sin^2(c . phi_n),  c a Local readout      (§13 T5)
  ce-mean      softmax cross-entropy of C mean_n(phi_n) + d against a one-hot class (a readout C, d)

Builders: `two_mass` (§13 T3 exactly), `chain` (n masses between two walls, a force u(t) on the first), `hru`
(a Hamiltonian recurrent layer: linear or log-cosh, with a readout), `hru_stack` (layers driven by the half-step
positions of the layer below: Drives between dynamic groups), `logcosh_toy` (§13 T4) and
`linhru_toy` (T5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from nodes.graph import Group, Local, Model
from nodes.leapfrog import LeapfrogRule
from nodes.springs import Drive, Spring

POTENTIALS = ("quadratic", "logcosh")
LOSSES = ("sq", "sin-sum", "sin-readout", "ce-mean")
INTEGRATORS = ("leapfrog", "start-force", "euler")  # only leapfrog is exactly time-reversible and symplectic
LAYOUT = ("phi", "pi")


@dataclass(frozen=True)
class Echo:
    """What a Hamiltonian model declares beyond its groups and interactions: the onsite potential of each dynamic
    group and the names of its Local parameters by role ({group: {"a": name, "w": ..., "c": ...}}), the loss, the
    initial state per group ((phi0, pi0) tuples; zeros if absent), the parameters that never learn, and the
    integrator (with `collect` "half" or "full": where dH/dtheta is read; anything but leapfrog/half is an
    ablation for the exactness tests, refused by rhel and heb)."""

    potential: dict
    roles: dict
    loss: str = "sq"
    start: dict = field(default_factory=dict)
    frozen: tuple = ()
    readout: dict = field(default_factory=dict)  # readout role -> parameter name (output group's node)
    integrator: str = "leapfrog"
    collect: str = "half"
    damping: float = 0.0


@dataclass(frozen=True)
class HamiltonianModel(Model):
    """A Model whose nodes integrate H (physics "leapfrog", rule nodes/leapfrog.LeapfrogRule), with its declaration
    beyond groups and interactions: `echo` (Echo)."""

    echo: Echo | None = field(default=None, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.echo, Echo):
            raise ValueError(f"model {self.name}: a Hamiltonian model declares its Echo (echo=...), got {self.echo!r}")


# ---- builders ------------------------------------------------------------------------------------------------
def _chain_mask(n: int) -> tuple:
    """The springs of a chain inside one group: W[i, i+1] (row i's owner and i+1's replica hold k_{i,i+1})."""
    return tuple(tuple(1 if j == i + 1 else 0 for j in range(n)) for i in range(n))


def _set(values: dict):
    def init(params, gen):
        for k, v in values.items():
            params[k] = torch.as_tensor(v, dtype=torch.float64).reshape(params[k].shape).clone()
        return params
    return init


def two_mass(k12: float = 0.7, dt: float = 1e-3, integrator: str = "leapfrog",
             damping: float = 0.0) -> HamiltonianModel:
    """§13 T3: masses 1, walls k1 = 1 and k2 = 1.3 (Local `k1`, `k2`, frozen), the trained spring k12 between
    them (a Spring m1 -> m2, held at both ends), from phi = (0.3, -0.2), pi = (0, 0.1); loss sq on m2.
    No input: the boundary x is a (B, T, 0) sequence."""
    groups = (Group("u", 1, "input"), Group("m1", 1, "hidden", LAYOUT), Group("m2", 1, "output", LAYOUT))
    echo = Echo(potential={"m1": "quadratic", "m2": "quadratic"}, roles={"m1": {"a": "k1"}, "m2": {"a": "k2"}},
                loss="sq", start={"m1": ((0.3,), (0.0,)), "m2": ((-0.2,), (0.1,))}, frozen=("k1", "k2", "g"),
                integrator=integrator, damping=damping)
    return HamiltonianModel("two-mass", "leapfrog", "identity", groups,
                            (Spring("m1", "m2", "k12"), Drive("u", "m1", "g"), Local("m1", "k1"), Local("m2", "k2")),
                            dt=dt, rule=LeapfrogRule, init=_set({"k12": k12, "k1": 1.0, "k2": 1.3, "g": 0.0}),
                            echo=echo, frozen=echo.frozen)


def chain(n: int = 16, dt: float = 0.05, k: float = 1.0, wall: float = 1.0, spread: float = 0.0,
          potential: str = "quadratic", integrator: str = "leapfrog", damping: float = 0.0, loss: str = "sq",
          seed: int = 0) -> HamiltonianModel:
    """n unit masses in a row between two walls: springs k_{i,i+1} = k (+ U(-spread, spread), seeded) and the walls'
    springs (Local `a`, `a_end`: `wall` at the two ends, 0 inside), all trained; a force u(t) on mass 0 (Drive
    u -> chain, frozen gain 1 on unit 0). The loss reads the last mass, so it is a group of its own: `chain`
    (masses 0..n-2) and `end` (mass n-1), their spring a Spring chain -> end. potential logcosh adds
    c log cosh(w phi)/w to every mass (w = 1, c = 0.5, frozen): coupled non-linear oscillators."""
    if n < 2:
        raise ValueError(f"sizes: a chain needs at least 2 masses, got {n}")
    m = n - 1
    groups = (Group("u", 1, "input"), Group("chain", m, "hidden", LAYOUT), Group("end", 1, "output", LAYOUT))
    gen = torch.Generator().manual_seed(int(seed))
    ks = k + (torch.rand(m, generator=gen, dtype=torch.float64) * 2 - 1) * spread
    K = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m - 1):
        K[i, i + 1] = ks[i]
    k_end = torch.zeros(1, m, dtype=torch.float64)
    k_end[0, m - 1] = ks[m - 1]
    gain = torch.zeros(m, 1, dtype=torch.float64)
    gain[0, 0] = 1.0
    roles = {"chain": {"a": "a"}, "end": {"a": "a_end"}}
    local = [Local("chain", "a"), Local("end", "a_end")]
    values = {"K": K, "k_end": k_end, "g": gain, "a": [wall] + [0.0] * (m - 1), "a_end": [wall]}
    frozen = ["g"]
    if potential == "logcosh":
        for gname, size in (("chain", m), ("end", 1)):
            roles[gname].update(w=f"w.{gname}", c=f"c.{gname}")
            local += [Local(gname, f"w.{gname}"), Local(gname, f"c.{gname}")]
            values.update({f"w.{gname}": [1.0] * size, f"c.{gname}": [0.5] * size})
            frozen += [f"w.{gname}", f"c.{gname}"]
    interactions = (Spring("chain", "chain", "K", mask=_chain_mask(m)),
                    Spring("chain", "end", "k_end", mask=(tuple(1 if j == m - 1 else 0 for j in range(m)),)),
                    Drive("u", "chain", "g", mask=tuple((1,) if i == 0 else (0,) for i in range(m))))
    echo = Echo(potential={"chain": potential, "end": potential}, roles=roles, loss=loss, frozen=tuple(frozen),
                integrator=integrator, damping=damping)
    return HamiltonianModel("chain" if potential == "quadratic" else "chain-logcosh", "leapfrog", "identity", groups,
                            interactions + tuple(local), dt=dt, rule=LeapfrogRule, init=_set(values), echo=echo,
                            frozen=echo.frozen)


def hru(d_in: int, width: int, n_out: int, potential: str = "quadratic", dt: float = 0.5, loss: str = "ce-mean",
        seed: int = 0, integrator: str = "leapfrog", damping: float = 0.0) -> HamiltonianModel:
    """A Hamiltonian recurrent layer (one group `h` of uncoupled units) driven by d = B u_t + b (Drive u -> h),
    onsite stiffness `A` (quadratic: the linear HRU, §10.4 LinHRU with a scalar step) or `A`, `w`, `c` (logcosh:
    NonlinHRU's potential, without the code's squashing of c), and for ce-mean a readout C (n_out, width),
    d (n_out,) of the time-mean. Seeded: B ~ N(0, 1/d_in), A ~ U(0.5, 2) (linear) or U(0.1, 1), w ~ U(0.5, 1),
    c ~ U(0.5, 1) (log-cosh), C ~ N(0, 1/width), b = d = 0."""
    groups = (Group("u", d_in, "input"), Group("h", width, "output", LAYOUT))
    gen = torch.Generator().manual_seed(int(seed))

    def unif(lo, hi, size):
        return lo + (hi - lo) * torch.rand(size, generator=gen, dtype=torch.float64)
    values = {"B": torch.randn(width, d_in, generator=gen, dtype=torch.float64) / math.sqrt(d_in)}
    local, roles = [Local("h", "A")], {"a": "A"}
    if potential == "quadratic":
        values["A"] = unif(0.5, 2.0, width)
    else:
        values.update(A=unif(0.1, 1.0, width), w=unif(0.5, 1.0, width), c=unif(0.5, 1.0, width))
        local += [Local("h", "w"), Local("h", "c")]
        roles.update(w="w", c="c")
    readout = {}
    if loss == "ce-mean":
        local += [Local("h", "C", (n_out, width)), Local("h", "d", (n_out,))]
        values["C"] = torch.randn(n_out, width, generator=gen, dtype=torch.float64) / math.sqrt(width)
        readout = {"C": "C", "d": "d"}
    echo = Echo(potential={"h": potential}, roles={"h": roles}, loss=loss, readout=readout, integrator=integrator,
                damping=damping)
    return HamiltonianModel(f"hru-{'linear' if potential == 'quadratic' else 'logcosh'}", "leapfrog", "identity",
                            groups, (Drive("u", "h", "B", "b"), *local), dt=dt, rule=LeapfrogRule,
                            init=_set(values), echo=echo, frozen=echo.frozen)


def hru_stack(d_in: int, widths: tuple, n_out: int, potential: str = "quadratic", dt: float = 0.5,
              loss: str = "ce-mean", seed: int = 0, integrator: str = "leapfrog",
              damping: float = 0.0) -> HamiltonianModel:
    """Stacked Hamiltonian recurrent layers h1 .. hL: layer 1 driven by B1 u_t + b1, layer l by B_l phi_half of
    layer l-1 (its half-step position in the same step: a Drive between dynamic groups) + b_l; the last
    layer has the readout. Seeded like `hru`, layer by layer."""
    gen = torch.Generator().manual_seed(int(seed))

    def unif(lo, hi, size):
        return lo + (hi - lo) * torch.rand(size, generator=gen, dtype=torch.float64)
    names = [f"h{l + 1}" for l in range(len(widths))]
    groups = [Group("u", d_in, "input")]
    interactions, local, values, roles, pot = [], [], {}, {}, {}
    src, fan = "u", d_in
    for l, (g, w) in enumerate(zip(names, widths)):
        groups.append(Group(g, w, "output" if l == len(widths) - 1 else "hidden", LAYOUT))
        interactions.append(Drive(src, g, f"B{l + 1}", f"b{l + 1}"))
        values[f"B{l + 1}"] = torch.randn(w, fan, generator=gen, dtype=torch.float64) / math.sqrt(fan)
        values[f"A{l + 1}"] = unif(0.5, 2.0, w) if potential == "quadratic" else unif(0.1, 1.0, w)
        local.append(Local(g, f"A{l + 1}"))
        roles[g] = {"a": f"A{l + 1}"}
        if potential == "logcosh":
            values.update({f"w{l + 1}": unif(0.5, 1.0, w), f"c{l + 1}": unif(0.5, 1.0, w)})
            local += [Local(g, f"w{l + 1}"), Local(g, f"c{l + 1}")]
            roles[g].update(w=f"w{l + 1}", c=f"c{l + 1}")
        pot[g] = potential
        src, fan = g, w
    readout = {}
    if loss == "ce-mean":
        local += [Local(names[-1], "C", (n_out, widths[-1])), Local(names[-1], "d", (n_out,))]
        values["C"] = torch.randn(n_out, widths[-1], generator=gen, dtype=torch.float64) / math.sqrt(widths[-1])
        readout = {"C": "C", "d": "d"}
    echo = Echo(potential=pot, roles=roles, loss=loss, readout=readout, integrator=integrator, damping=damping)
    return HamiltonianModel(f"hru-stack-{'linear' if potential == 'quadratic' else 'logcosh'}", "leapfrog",
                            "identity", tuple(groups), tuple(interactions + local), dt=dt, rule=LeapfrogRule,
                            init=_set(values), echo=echo, frozen=echo.frozen)


def logcosh_toy(h: float = 0.1, integrator: str = "leapfrog") -> HamiltonianModel:
    """§13 T4: 4 uncoupled units, u_t fed straight in (B = I, frozen), alpha = 0.5, c = (0.8, 0.6, 0.9, 0.7)
    (frozen), trained w = (0.7, 0.9, 0.6, 0.8); loss sin-sum; from rest."""
    groups = (Group("u", 4, "input"), Group("h", 4, "output", LAYOUT))
    values = {"B": torch.eye(4, dtype=torch.float64), "A": [0.5] * 4, "c": [0.8, 0.6, 0.9, 0.7],
              "w": [0.7, 0.9, 0.6, 0.8]}
    echo = Echo(potential={"h": "logcosh"}, roles={"h": {"a": "A", "w": "w", "c": "c"}}, loss="sin-sum",
                frozen=("B", "A", "c"), integrator=integrator)
    return HamiltonianModel("logcosh-toy", "leapfrog", "identity", groups,
                            (Drive("u", "h", "B"), Local("h", "A"), Local("h", "w"), Local("h", "c")), dt=h,
                            rule=LeapfrogRule, init=_set(values), echo=echo, frozen=echo.frozen)


def linhru_toy(h: float = 0.1, collect: str = "half", seed: int = 3) -> tuple:
    """§13 T5: 3 units, 2 input channels, 300 steps; A = (0.5, 1, 2), B (3x2) ~ N(0, 1) 0.5, readout c ~ N(0, 1)
    (frozen), inputs u ~ N(0, 1) (NumPy default_rng(seed), order u, B, c); loss sin-readout. Returns (model, u)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    u = torch.from_numpy(rng.standard_normal((300, 2)))
    B = torch.from_numpy(rng.standard_normal((3, 2)) * 0.5)
    c = torch.from_numpy(rng.standard_normal(3))
    groups = (Group("u", 2, "input"), Group("h", 3, "output", LAYOUT))
    echo = Echo(potential={"h": "quadratic"}, roles={"h": {"a": "A"}}, loss="sin-readout", readout={"c": "c"},
                frozen=("c",), collect=collect)
    model = HamiltonianModel("linhru-toy", "leapfrog", "identity", groups,
                             (Drive("u", "h", "B"), Local("h", "A"), Local("h", "c", (1, 3))), dt=h, rule=LeapfrogRule,
                             init=_set({"A": [0.5, 1.0, 2.0], "B": B, "c": c[None]}), echo=echo, frozen=echo.frozen)
    return model, u


HAMILTONIAN_MODELS = ("two-mass", "chain", "chain-logcosh", "hru-linear", "hru-logcosh", "hru-stack-linear",
                      "hru-stack-logcosh")


def _from_settings(cfg) -> HamiltonianModel:
    """A Hamiltonian model from a run's settings: `dt`, `integrator`, `damping`; a chain's masses are sizes[1]; an
    HRU's sizes are [inputs, width(s)..., outputs] (its random B, C seeded by `seed`)."""
    kw = dict(integrator=cfg.integrator, damping=cfg.damping)
    if cfg.model == "two-mass":
        return two_mass(dt=cfg.dt, **kw)
    if cfg.model.startswith("chain"):
        return chain(cfg.sizes[1], dt=cfg.dt, potential="logcosh" if cfg.model == "chain-logcosh" else "quadratic",
                     **kw)
    potential = "logcosh" if cfg.model.endswith("logcosh") else "quadratic"
    if cfg.model.startswith("hru-stack"):
        return hru_stack(cfg.sizes[0], tuple(cfg.sizes[1:-1]), cfg.sizes[-1], potential, dt=cfg.dt, seed=cfg.seed,
                         **kw)
    return hru(cfg.sizes[0], cfg.sizes[1], cfg.sizes[2], potential, dt=cfg.dt, seed=cfg.seed, **kw)


BUILDERS = {name: _from_settings for name in HAMILTONIAN_MODELS}  # nodes/models.py's registry

