"""Protocols as phase programs plus the local learning rule every node runs (DESIGN.md "The pieces").

A protocol says (1) what the coordinator walks: `program(beta, T1, T2)`, a tuple of `Phase`s for one batch, each
with its length, its beta (real or complex), where it starts, its arithmetic; and (2) what every node does with what
it sees: `on_step` (at every step of a phase, may return a per-step gradient, applied as plain SGD), `on_exit`
(after a phase's last exchange: accumulate) and `estimate` (the node's g_hat from its accumulators). The hooks
receive `G(scale)`, which computes scale * G(s) of the node's own held tensors at its current state and inbox, with
`G.signals()` and `G.outer(scale, post, pre)` beside it (nodes/rules.py), and `mem`, the node's own accumulators:
nothing else is in reach, so a protocol cannot read a non-neighbour.

The default rule is the linear EP estimator g_hat = sum_k coef_k G(s_k) (docs/algorithms.md §1), accumulated at the exit
of every phase with a non-zero `coef`. A protocol lives in one file of protocols/ and is found by discovery (the
module's `PROTOCOL`); a protocol object defined anywhere else (a test, a notebook) runs the same way through the
Python API (experiments/api.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phase:
    """`steps` synchronous steps at `beta` from `start` ("zero", "carry" = continue from the current state, or a
    saved phase's name), in complex arithmetic when `complex`; the final state is saved as `name`. The default
    learning rule accumulates coef * G(s_end) at the phase's exit."""

    name: str
    steps: int
    beta: complex = 0.0
    start: str = "zero"
    complex: bool = False
    coef: complex = 0.0
    kinds: tuple = ()        # message kinds the phase carries besides the signal `a` (the protocol's `ports`)

    # What one family needs beyond these is its own subclass (e.g. protocols/rhel.EchoPhase: a momentum flip and
    # copies run side by side; protocols/hep_osc.ClockedPhase: beta as a clock), read by its own rule and hooks.
    clocked = False          # True: beta is a clock, the protocol's step_beta(phase, t, beta) at every step

    def rows(self, batch: int) -> int:
        """The rows of the phase's states and messages (a subclass may run several copies of the batch)."""
        return batch


def rows(phase: Phase, batch: int) -> int:
    """The rows of a phase's states and messages: Phase.rows."""
    return phase.rows(batch)


def add(acc, g):
    """acc + g, tensor by tensor (acc None: g itself). Sums of G's (nodes.rules.GSum) stay unevaluated until read."""
    if not acc:
        return g
    try:
        return acc + g
    except TypeError:  # plain dicts of tensors
        return {k: acc[k] + v for k, v in g.items()}


class Protocol:
    """Base class; subclasses set `name` and write `program`. Class attributes say what the protocol needs."""

    name = ""
    random_sign = False      # the sign of beta is drawn per batch from the run's seeded generator
    needs_beta = True        # beta = 0 is an invalid config
    has_step_rule = False    # on_step runs at every step (parameters may change inside a phase)
    updates_in_phases = False  # parameters change inside phases only: no optimiser step at the end of a batch
    Settings = None          # its own settings: a frozen dataclass whose fields (with their one default each) are the
                             # config keys carried to the nodes; their values are in self.settings
    keys = ()                # the carried keys (the Settings' fields; a protocol without Settings may list them)
    checks = ()              # config keys that `validate` reads but the nodes do not get (e.g. the optimiser)
    models = ()              # the model names it runs on (empty: any)
    ports = ()               # extra message kinds its phases may carry (nodes/graph.EXTRA_KINDS): ports derived
    rule = None              # the nodes' rule class for it (a nodes.rules.NodeRule subclass; None: the model's)
    stationary = False       # its estimate reads stationary states: with residual_tol, an unsettled phase fails the audit

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("Settings") is not None:
            cls.keys = tuple(f.name for f in dataclasses.fields(cls.Settings))

    def __init__(self, **settings):
        self.settings = self._typed(settings)

    def _typed(self, settings: dict) -> dict:
        """The settings as the protocol's Settings declare them: every field, its default where not given; a key
        it does not declare is a ValueError naming it."""
        if self.Settings is None:
            return dict(settings)
        names = [f.name for f in dataclasses.fields(self.Settings)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ValueError(f"{unknown[0]}: protocol {self.name} has no setting {unknown[0]!r} (its settings: "
                             f"{', '.join(names)})")
        return dataclasses.asdict(self.Settings(**settings))

    def configured(self, **settings) -> "Protocol":
        """A copy of this protocol with its carried settings (the config keys named in `keys`)."""
        p = type(self).__new__(type(self))
        p.__dict__.update(self.__dict__)
        p.settings = self._typed({**self.settings, **settings})
        return p

    def validate(self, beta, **settings) -> None:
        """Raise ValueError('field: why') for settings this protocol cannot run."""
        if self.needs_beta and beta == 0:
            raise ValueError(f"beta: must be non-zero for protocol {self.name}")

    def program(self, beta, T1: int, T2: int) -> tuple:
        raise NotImplementedError

    def fallback(self, beta, T1: int, T2: int):
        """The program a gated training batch falls back to when a complex phase diverged (Engine.gated_batch);
        None: no fallback (the diverged samples are dropped)."""
        return None

    def batch_beta(self, beta: float, rng: np.random.Generator) -> float:
        """The beta of one batch; `random_sign` flips it with the run's seeded generator."""
        if self.settings.get("random_sign", self.random_sign):  # declared by its Settings, else the class default
            return float(beta) * (1.0 if rng.random() < 0.5 else -1.0)
        return float(beta)

    def step_beta(self, phase: Phase, t: int, beta):
        """The nudging strength a node applies at step t of `phase`, from the phase's global beta and its own step
        counter: constant unless the protocol runs a clock (phase.clocked)."""
        return beta

    def gdu_phase(self, program) -> Phase:
        """The phase whose step-wise updates form the GDU series (docs/algorithms.md §5.2): the first nudged one."""
        return next(p for p in program if p.beta != 0)

    # ---- the local learning rule (runs inside every node) -------------------------------------------------
    def on_step(self, phase: Phase, t: int, mem: dict, G) -> tuple:
        """At step t of `phase` (the node holds s_t and its neighbours' a_t): (mem, g or None), g a per-step gradient
        on the node's held tensors; the node applies theta -= lr * g with its own learning rates (the run's `lr`)
        before it computes s_{t+1}, so that transition uses the changed theta."""
        return mem, None

    def on_exit(self, phase: Phase, mem: dict, G) -> dict:
        """After the phase's last exchange: acc += coef * G(s_end)."""
        if phase.coef:
            mem = {**mem, "acc": add(mem.get("acc"), G(phase.coef))}
        return mem

    def prediction(self, state: dict, program) -> object:
        """A node's prediction after a training batch, from its own phase state: the first phase's final state."""
        return state["saved"][program[0].name]

    def estimate(self, mem: dict, held: dict) -> dict:
        """The node's g_hat on its held tensors (zeros where nothing was accumulated); real part of a complex sum."""
        acc = mem.get("acc") or {}
        return {k: (acc[k].real if acc[k].is_complex() else acc[k]) if k in acc else v.new_zeros(v.shape)
                for k, v in held.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.settings})"


def setting_default(key: str, protocols) -> object:
    """The one default of a carried setting, from the Settings of the protocols that declare it (they must agree)."""
    found = {f.default for p in protocols if p.Settings is not None for f in dataclasses.fields(p.Settings)
             if f.name == key}
    if len(found) != 1:
        raise RuntimeError(f"protocol setting {key!r}: {'no' if not found else 'disagreeing'} defaults {found}")
    return found.pop()

