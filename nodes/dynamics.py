"""The physics a node runs on its own block (docs/algorithms.md §1): one class per model kind, registered by name.

A physics maps a node's state s (B, width) and its drive u (the sum of the partials of the interactions that
touch its units, nodes/graph.Term) to the next state, and gives the signal a(s) it sends its neighbours:

  energy:        a(s) = rho(s);  s <- s - dt (s - rho'(s) h + beta (s - y))      [u = h; beta term at the output]
  prototypical:  a(s) = s;       s <- rho(h - beta (s - y)) = g(u - k beta (s - y)),  u = k h + c
  vector-field:  a(s) = rho(s);  s <- s + dt (-s + h - beta (s - y))               [f = -s + h, any h: no energy]

where rho(z) = g(k z + c) (nodes/activations.PREACTIVATION; sigmoid4: k = 4, c = -2): k and c are folded into the
clamped drive and the products' alpha, so a prototypical step is the products and one pass of g. The input's
signal is x itself (not passed through rho). Complex states (holomorphic phases) use the same formulas.
"""
from __future__ import annotations

from nodes.activations import ACTIVATIONS, PREACTIVATION, RHO_PRIME_OF_OUTPUT


PHYSICS: dict = {}  # name -> Physics subclass, filled as they are defined


class Physics:
    """Base: `k`, `c` fold the activation's affine map into the drive (1, 0 unless a subclass says otherwise). A
    subclass with a `name` registers itself (PHYSICS), here or in a family's own module (nodes/leapfrog.py)."""

    name = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            PHYSICS[cls.name] = cls

    def __init__(self, activation: str, dt: float = 1.0):
        self.activation, self.dt = activation, float(dt)
        self.rho, self.rho_prime = ACTIVATIONS[activation]
        self.k, self.c = 1.0, 0.0

    def signal(self, s):
        raise NotImplementedError

    def step(self, s, u, beta=0.0, y=None):
        """s_{t+1} from s_t and the drive u (consumed). y is None except at output nodes."""
        raise NotImplementedError

    def gdu_state_scale(self, s_free):
        """c in the neurons' GDU relation (s^beta_{t+1} - s^beta_t)/beta -> -c * dl/ds_{T1-t} near the free fixed
        point s_free (docs/guide/auditing.md, "Step-wise audit"); a scalar or a tensor shaped like s_free."""
        raise NotImplementedError


class Energy(Physics):
    name = "energy"

    def signal(self, s):
        return self.rho(s)

    def step(self, s, u, beta=0.0, y=None):
        grad = s - self.rho_prime(s) * u
        if y is not None and beta != 0:
            grad = grad + beta * (s - y)
        return s - self.dt * grad

    def gdu_state_scale(self, s_free):
        """dt: an Euler step moves the state by dt times its drive, the nudge's included."""
        return self.dt


class Prototypical(Physics):
    name = "prototypical"

    def __init__(self, activation: str, dt: float = 1.0):
        super().__init__(activation, dt)
        self.k, self.c, self.g = PREACTIVATION[activation]

    def signal(self, s):
        return s

    def step(self, s, u, beta=0.0, y=None):
        if y is not None and beta != 0:
            u = u - (self.k * beta) * (s - y)
        return self.g(u)

    def gdu_state_scale(self, s_free):
        """rho'(h*) per unit, from s* = rho(h*): s <- rho(h) has Jacobian D H with H symmetric, so the nudged
        differences are D (J^T)^t times the cost gradient (to first order in beta)."""
        return RHO_PRIME_OF_OUTPUT[self.activation](s_free)


class VectorField(Physics):
    """dx/dt = f(x) = -x + h(x), h = W_{n-1} rho(x_{n-1}) + b_{n-1} + B_n rho(x_{n+1}) (docs/algorithms.md §1): a field
    with no energy unless B_n = W_n^T and rho' is uniform; the nudge -beta (x_N - y) joins f_N."""

    name = "vector-field"

    def signal(self, s):
        return self.rho(s)

    def step(self, s, u, beta=0.0, y=None):
        f = u - s
        if y is not None and beta != 0:
            f = f - beta * (s - y)
        return s + self.dt * f

    def gdu_state_scale(self, s_free):
        return self.dt


def physics_of(model) -> Physics:
    if model.physics not in PHYSICS:
        raise ValueError(f"model {model.name}: unknown physics {model.physics!r}; expected one of {tuple(PHYSICS)}")
    return PHYSICS[model.physics](model.activation, model.dt)


CHECK_EVERY = 10  # steps between divergence checks (and the last step): a check costs a pass and a host sync


def check_due(t: int, steps: int) -> bool:
    """Whether the state after step t (1-based) of a `steps`-step phase is checked for divergence."""
    return t % CHECK_EVERY == 0 or t == steps


def divergence(s, limit: float, m: float | None = None):
    """None if max |s| <= limit, else what is wrong ('is NaN' or 'diverged (max |s| = ...)'); `m` is max |s| when
    the caller has it."""
    if m is None:
        m = float(s.abs().max()) if s.numel() else 0.0
    if m <= limit:
        return None
    return "is NaN" if m != m else f"diverged (max |s| = {m:.3g})"


def cost(s_out, y):
    """L = batch mean of 1/2 ||s_N - y||^2."""
    return 0.5 * ((s_out - y) ** 2).sum(-1).mean()
