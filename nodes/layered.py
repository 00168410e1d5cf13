"""Builders of model declarations (nodes/graph.py): layered nets and a directed graph of units.

`layered("energy" | "prototypical", sizes, activation, dt)`: layers 0..N, layer 0 the clamped input x, layer N
the output; `W{n}` (d_{n+1}, d_n) and `b{n}` (d_{n+1},) connect layer n to n+1 and are used both ways
(docs/algorithms.md §1, models `energy` and `prototypical`). `layered_asym(...)`: forward `W{n}`, `b{n}` owned by
layer n+1 and feedback `B{n}` (d_n, d_{n+1}), no bias, owned by layer n, for n = 1..N-1 (§1, "Asymmetric layered
networks"); `feedback=False` or `feedback_init="none"` gives a feed-forward net; `feedback_init` "transpose" starts B{n} as W{n}^T,
"independent" draws it like any weight, "tied" keeps B{n} = W{n}^T for good (symmetric interactions, model
`<physics>-tied`), and `angle` psi flips each feedback entry's sign with probability
(1 - cos psi) / 2 (Ernoult et al. 2020's --angle). `directed_graph(...)`: one recurrent group of units driven
by a (masked) directed weight matrix W and an input group through U (§13's toy, T1); the dynamics that run on it
are the non-conservative protocols' (docs/families/nonconservative.md).
"""
from __future__ import annotations

import math

import torch

from nodes.activations import ACTIVATIONS
from nodes.graph import Dense, Group, Model

SYMMETRIC = ("energy", "prototypical")
MODELS = SYMMETRIC + ("prototypical-asym", "vector-field", "vector-graph")  # what a config's `model` may name
FEEDBACK_INITS = ("transpose", "independent", "none", "tied")  # "none": feed-forward, no B{n}; "tied": B{n} = W{n}^T
                                                               # always (one symmetric parameter, no B{n})


def _groups(sizes) -> tuple:
    sizes = tuple(int(d) for d in sizes)
    if len(sizes) < 2 or any(d < 1 for d in sizes):
        raise ValueError(f"sizes: need at least two layer sizes, each >= 1; got {list(sizes)}")
    N = len(sizes) - 1
    return sizes, tuple(Group(f"L{n}", d, "input" if n == 0 else "output" if n == N else "hidden")
                        for n, d in enumerate(sizes))


def _activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: unknown activation {activation!r}; expected one of {tuple(ACTIVATIONS)}")


def layered(kind: str, sizes, activation: str, dt: float = 1.0) -> Model:
    """The symmetric layered net of model `kind` (its physics has the same name)."""
    if kind not in SYMMETRIC:
        raise ValueError(f"model: unknown model {kind!r}; expected one of {SYMMETRIC}")
    _activation(activation)
    sizes, groups = _groups(sizes)
    inter = tuple(Dense(f"L{n}", f"L{n + 1}", f"W{n}", f"b{n}", symmetric=True) for n in range(len(sizes) - 1))
    lr = {p: n for n in range(len(sizes) - 1) for p in (f"W{n}", f"b{n}")}
    return Model(kind, kind, activation, groups, inter, float(dt), lr)


def layered_asym(sizes, activation: str, feedback: bool = True, dt: float = 1.0, physics: str = "prototypical",
                 feedback_init: str = "transpose", angle: float = 0.0) -> Model:
    """Forward W{n}, b{n} (owned by layer n+1) and, with `feedback`, B{n} from layer n+1 to n (owned by layer n)."""
    _activation(activation)
    if feedback_init not in FEEDBACK_INITS:
        raise ValueError(f"feedback_init: expected one of {FEEDBACK_INITS}, got {feedback_init!r}")
    feedback = feedback and feedback_init != "none"
    if feedback and feedback_init == "tied":
        return _tied(sizes, activation, dt, physics)
    if not 0.0 <= float(angle) <= 180.0:
        raise ValueError(f"angle: must be in [0, 180] degrees, got {angle}")
    sizes, groups = _groups(sizes)
    N = len(sizes) - 1
    inter = [Dense(f"L{n}", f"L{n + 1}", f"W{n}", f"b{n}", symmetric=False) for n in range(N)]
    if feedback:
        inter += [Dense(f"L{n + 1}", f"L{n}", f"B{n}", None, symmetric=False) for n in range(1, N)]
    lr = {p: n for n in range(N) for p in (f"W{n}", f"b{n}", f"B{n}")}

    def init(params, gen):
        flip = (1.0 - math.cos(math.radians(float(angle)))) / 2.0
        for n in range(1, N):
            if f"B{n}" not in params:
                continue
            B = params[f"W{n}"].T.clone() if feedback_init == "transpose" else params[f"B{n}"]
            signs = torch.where(torch.rand(B.shape, generator=gen, dtype=torch.float64) < flip, -1.0, 1.0)
            params[f"B{n}"] = (B * signs).contiguous()
        return params

    name = ("prototypical-asym" if physics == "prototypical" else physics) if feedback else "feed-forward"
    return Model(name, physics, activation, groups, tuple(inter),
                 float(dt), lr, init=init if feedback else None)


def _tied(sizes, activation: str, dt: float, physics: str) -> Model:
    """Feedback tied to the forward weights for good, B{n} = W{n}^T: symmetric Dense terms under the asymmetric
    net's physics (on `vector-field`: dx_n/dt = -x_n + W_{n-1} rho(x_{n-1}) + b_{n-1} + W_n^T rho(x_{n+1}), a field
    that is still not a gradient where rho' varies). The seeded W{n}, b{n} are those of the untied net. Name
    `<physics>-tied`."""
    sizes, groups = _groups(sizes)
    inter = tuple(Dense(f"L{n}", f"L{n + 1}", f"W{n}", f"b{n}", symmetric=True) for n in range(len(sizes) - 1))
    lr = {p: n for n in range(len(sizes) - 1) for p in (f"W{n}", f"b{n}")}
    return Model(f"{physics}-tied", physics, activation, groups, inter, float(dt), lr)


def directed_graph(n_units: int, n_inputs: int, n_outputs: int, mask=None, activation: str = "tanh",
                   dt: float = 0.05, physics: str = "energy", name: str = "directed-graph") -> Model:
    """One recurrent group `S` of units (the last `n_outputs` also form no separate group: the cost reads them
    through the output group `Y`), W (S -> S, directed, optionally masked), U (X -> S) and b. Declaration only:
    the partition, ports and legal edges follow the mask."""
    _activation(activation)
    if not 1 <= n_outputs < n_units or n_inputs < 1:
        raise ValueError(f"sizes: a directed graph needs [inputs >= 1, units, outputs] with 1 <= outputs < units; got "
                         f"{[n_inputs, n_units, n_outputs]}")
    groups = (Group("X", n_inputs, "input"), Group("S", n_units - n_outputs, "hidden"),
              Group("Y", n_outputs, "output"))
    inter = []
    for src in ("S", "Y"):
        for dst in ("S", "Y"):
            sub = None
            if mask is not None:
                rows = range(0, n_units - n_outputs) if dst == "S" else range(n_units - n_outputs, n_units)
                cols = range(0, n_units - n_outputs) if src == "S" else range(n_units - n_outputs, n_units)
                sub = tuple(tuple(int(mask[i][j]) for j in cols) for i in rows)
            inter.append(Dense(src, dst, f"W_{dst}{src}", None, symmetric=False, mask=sub))
    inter += [Dense("X", "S", "U_S", "b_S", symmetric=False), Dense("X", "Y", "U_Y", "b_Y", symmetric=False)]
    return Model(name, physics, activation, groups, tuple(inter), float(dt),
                 {p.W: 0 for p in inter} | {p.b: 0 for p in inter if p.b})


def _from_settings(cfg) -> Model:
    """A layered net from a run's settings: `sizes`, `activation`, `dt`; the asymmetric nets also `feedback_init`
    and `angle`; `vector-graph` reads sizes as [inputs, units, outputs] (the last `outputs` units are the output)."""
    if cfg.model == "vector-graph":
        n_in, n_units, n_out = cfg.sizes
        return directed_graph(n_units, n_in, n_out, activation=cfg.activation, dt=cfg.dt, physics="vector-field",
                              name="vector-graph")
    if cfg.model in ("prototypical-asym", "vector-field"):
        return layered_asym(tuple(cfg.sizes), cfg.activation, True, cfg.dt,
                            "prototypical" if cfg.model == "prototypical-asym" else "vector-field",
                            feedback_init=cfg.feedback_init, angle=cfg.angle)
    return layered(cfg.model, tuple(cfg.sizes), cfg.activation, cfg.dt)


BUILDERS = {name: _from_settings for name in MODELS}  # nodes/models.py's registry
