"""A logical node's local rule: pure functions over its own state, parameters, inbox and boundary signals.

For every phase (protocols/base.Phase) a node runs

    state, outbox         = enter(state, params, boundary)                 # entry hook (reset, restart, cast)
    state, outbox, delta  = step(state, inbox_t, params, boundary, t)      # t = 0 .. steps-1
    state, delta          = exit(state, inbox_T, params, boundary, T)      # after one more exchange

where inbox_t holds the neighbours' messages tagged t, assembled per slot (nodes/graph.Slot: the signal of one
group, (B, d_group)), outbox the messages to send next ({kind: tensor} goes to every out-port of that kind), and
delta a parameter change {local tensor: increment} that the runner commits before the next step (the step itself
already uses theta + delta): delta = -lr * g for the per-step gradient g that the protocol's `on_step` returns, with
the node's own learning rates (plain SGD inside the phase). The physics (nodes/dynamics) computes s_{t+1}; the protocol's learning hooks
(`on_step`, `on_exit`) see only G of the node's own held tensors at its own state and inbox. The state is a dict:
`s` (B, width), `a` = a(s) (what is sent), `const` (the clamped part of the drive), `saved` {phase: s} and `mem`
(the protocol's accumulators). The same rule runs in the fabric's hosts and, on one partition, in the in-process
engine, whose autograd gives BPTT: one arithmetic, two runners. Nothing here knows the runtime.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from nodes.dynamics import physics_of
from nodes.graph import SIGNAL, NodeSpec
from nodes.noise import noise_block


class LocalityError(RuntimeError):
    """A node read or sent something that is not routed to it (a port it does not have, a boundary signal the
    model does not route to it). The text names node, phase and step."""


class Guarded(dict):
    """A node's inbox or boundary: a missing key is a LocalityError naming node, phase, step and the key (`where`:
    their text, or a (node, phase, step) tuple formatted only then)."""

    __slots__ = ("where", "what")

    def __init__(self, data, where: str, what: str):
        super().__init__(data)
        self.where, self.what = where, what

    def __missing__(self, key):
        where = self.where if isinstance(self.where, str) else "node {}, phase {}, step {}".format(*self.where)
        raise LocalityError(f"{where}: reads {self.what} {key!r}, which is not routed to it")


def complex_dtype(dtype):
    return {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(dtype, dtype)


class NodeRule:
    """The local rule of one logical node (its spec) under one protocol; `phase(ph)` binds it to a phase."""

    def __init__(self, spec: NodeSpec, protocol, lrs: dict | None = None, noise: tuple = (0.0, 0)):
        """lrs {local tensor: learning rate} for per-step updates (a protocol with `has_step_rule`); noise (std,
        seed): Gaussian noise on the pre-activations (nodes/noise.py) in every phase run with a `draw`."""
        self.spec, self.protocol = spec, protocol
        self.noise_std, self.noise_seed = float(noise[0]), int(noise[1])
        offset = 0
        for g in spec.model.dynamic_groups:
            if g.name == spec.block.group:
                break
            offset += g.size
        self.units = (offset + spec.block.lo, offset + spec.block.hi)  # the node's units among all dynamic units
        self.lrs = {k: float(v) for k, v in (lrs or {}).items() if v}
        self.id = spec.id
        self.phys = physics_of(spec.model)
        self.k = self.phys.k
        self.const_terms = tuple(sorted((t for t in spec.terms if t.constant), key=lambda t: t.order))
        self.const_weights = frozenset(t.weight for t in self.const_terms)
        self.clamped = any("x" in t.reads for t in self.const_terms)
        self.const_cache = None  # (inputs, their versions, dtype, device), value: `const` between phases of a batch
        self.step_terms = tuple(t for t in spec.terms if not t.constant)
        self.is_output = spec.is_output
        self.grads = tuple((k, g) for k, g in spec.grads.items() if g.active)
        self.step_hook = bool(protocol.has_step_rule)

    def phase(self, ph) -> "PhaseRule":
        if ph.kinds:
            raise ValueError(f"node {self.id}, phase {ph.name}: carries kinds {tuple(ph.kinds)}, which this rule "
                             f"does not send (protocol {self.protocol.name} needs a rule of its own)")
        return PhaseRule(self, ph)

    def checked(self, state):
        """The state the divergence check and the convergence residual read (a rule with more fields adds them)."""
        return state["s"]

    def sgd(self, g) -> dict | None:
        """delta = -lr * g on the tensors with a non-zero learning rate (None when nothing changes)."""
        if not g:
            return None
        delta = {k: g[k] * -lr for k, lr in self.lrs.items() if k in g}
        return delta or None

    # ---- the physics -----------------------------------------------------------------------------------------
    def const(self, params, boundary, dtype):
        """The clamped part of u: k (b + W x) + c for the constant terms (once per phase, not per step; outside
        autograd, the last value again while its inputs are the same tensors at the same versions: the phases of
        a batch share it). Callers never change it in place."""
        inputs = tuple(params[t.weight] for t in self.const_terms) + ((boundary["x"],) if self.clamped else ())
        key = (tuple(v._version for v in inputs), dtype, boundary["device"])
        if self.const_cache is not None and not torch.is_grad_enabled():
            (held, k0), value = self.const_cache
            if k0 == key and all(a is b for a, b in zip(held, inputs)):  # key holds one version per input
                return value
        u = self._const_of(params, boundary, dtype)
        self.const_cache = None if torch.is_grad_enabled() else ((inputs, key), u)
        return u

    def _const_of(self, params, boundary, dtype):
        u = None
        for t in self.const_terms:  # in their order (biases first: addmm folds them in)
            u = t.add_const(u, params[t.weight].to(dtype), boundary, dtype)
        if u is None:
            u = torch.zeros(self.spec.width, dtype=dtype, device=boundary["device"])
        if self.k != 1.0:
            u.mul_(self.k)
        if self.phys.c != 0.0:
            u.add_(self.phys.c)
        return u

    def drive(self, const, inbox, params, batch: int, dtype):
        """u = const + k (sum of a_slot M over the node's per-step terms, M = term.operand(W)). Always a new
        tensor."""
        u, k = None, self.k
        for t in self.step_terms:
            W = params[t.weight]
            if W.dtype != dtype:
                W = W.to(dtype)
            M = t.operand(W)
            u = torch.addmm(const, inbox[t.slot], M, alpha=k) if u is None else u.addmm_(inbox[t.slot], M, alpha=k)
        return const.expand(batch, self.spec.width).clone() if u is None else u

    def noise(self, boundary, run: str, steps: int, t0: int = 0):
        """k * std * xi over a phase's steps for this node's units, (steps, B, width); None without noise."""
        return noise_block(self.noise_std * self.k, self.noise_seed, boundary.get("draw"), run, steps,
                           boundary["batch"], *self.units, boundary["dtype"], boundary["device"], t0)

    def advance(self, s, const, inbox, params, beta, y, dtype, xi=None) -> tuple:
        """The physics of one step: (s_{t+1}, a(s_{t+1})) from s_t, the drive's parts (plus the noise xi on the
        pre-activations) and the nudge."""
        u = self.drive(const, inbox, params, s.shape[0], dtype)
        if xi is not None:
            u = u + xi
        s = self.phys.step(s, u, beta, y)
        return s, self.phys.signal(s)

    def G(self, a_own, inbox, boundary, scale=1.0) -> "GSum":
        """scale * G of every held tensor at the state whose signal is a_own, with the neighbours' signals in inbox
        (docs/algorithms.md §1: dE/dW = -rho(s_post) rho(s_pre)^T, batch mean), as a GSum: a mapping whose tensors are
        computed when read, so that sums of G's over phases cost one product per tensor."""
        return self.outer(scale, a_own, self.pre(inbox), boundary)

    def pre(self, inbox) -> dict:
        """Copies of the neighbours' signals that the node's gradients read (inbox buffers are reused by later
        steps)."""
        return {g.slot: inbox[g.slot].clone() for _, g in self.grads if g.reads_inbox}

    def outer(self, scale, post, pre: dict, boundary, synapses: bool = False) -> "GSum":
        """The products of G with `post` as the node's own signal and `pre` as its neighbours' (VF-style rules pair
        a change of one side with a state of the other): -scale/B sum over the batch of post x pre. `synapses`: the
        products between dynamic units only (no bias, no clamped input), e.g. the pre-synaptic term of a
        gradient field's -(d_theta f)^T delta."""
        x = boundary["x"] if any(g.reads_x for _, g in self.grads) else None
        return GSum(self, ((-scale / post.shape[0], post, pre, x, not synapses),))

    def products(self, terms) -> dict:
        """sum_k c_k G_k for terms (c_k = -scale_k / B, a_own, neighbours' signals, x), one product per tensor over
        the terms' states stacked along the batch (each held tensor's Grad.value over a Products), its structural
        mask applied."""
        p = Products(terms)
        out = {}
        for local, g in self.grads:
            t = g.value(p)
            out[local] = t if g.mask is None else t * g.mask.to(device=t.device, dtype=t.dtype)
        return out


class Products:
    """The terms of a sum of G's, as the Grads read them: `terms` ((c_k, a_own, slots, x, full), ...), `own()` the
    own signals times c_k stacked along the batch, `full` the terms with a share in the bias and the clamped input
    (not `synapses` only) and `part()` their own signals times c_k (None when there are none). Computed once."""

    def __init__(self, terms):
        self.terms = terms
        self.full = tuple(k for k in terms if k[4])
        self._own = self._part = None

    @staticmethod
    def cat(ts):
        return ts[0] if len(ts) == 1 else torch.cat(ts)

    def own(self):
        if self._own is None:
            self._own = self.cat([a * c for c, a, *_ in self.terms])
        return self._own

    def part(self):
        if self._part is None and self.full:
            self._part = self.own() if len(self.full) == len(self.terms) else self.cat([a * c for c, a, *_ in self.full])
        return self._part


class GSum(Mapping):
    """sum_k c_k G(s_k) over a node's held tensors, kept as the factors of its terms until a tensor is read (then
    NodeRule.products, once). GSum + GSum concatenates the terms; each term holds its own copies of the
    neighbours' signals (inbox buffers are reused by later steps)."""

    def __init__(self, rule: NodeRule, terms: tuple):
        self.rule, self.terms, self._value = rule, terms, None

    def __add__(self, other):
        if not isinstance(other, GSum) or other.rule is not self.rule:
            return NotImplemented
        return GSum(self.rule, self.terms + other.terms)

    def _tensors(self) -> dict:
        if self._value is None:
            self._value = self.rule.products(self.terms)
        return self._value

    def __getitem__(self, key):
        return self._tensors()[key]

    def __iter__(self):
        return (k for k, _ in self.rule.grads)

    def __len__(self) -> int:
        return len(self.rule.grads)


def step_series(Gs: list, beta) -> dict:
    """The GDU series (docs/algorithms.md §5.2) from G at s_0 .. s_T: {tensor: (G(s_{t+1}) - G(s_t)) / beta, t < T}."""
    return {k: (torch.stack([g[k] for g in Gs[1:]]) - torch.stack([g[k] for g in Gs[:-1]])) / beta for k in Gs[0]}


def rule_of(spec: NodeSpec, protocol, lrs: dict | None = None, noise: tuple = (0.0, 0)) -> NodeRule:
    """The node's rule: the protocol's rule class (protocols/base.Protocol.rule: learning-phase dynamics of its own,
    e.g. AEP's anchor), else the model's (nodes/graph.Model.rule), NodeRule by default."""
    return (getattr(protocol, "rule", None) or spec.model.rule or NodeRule)(spec, protocol, lrs, noise)


def _plus(params: dict, delta: dict) -> dict:
    return {k: (v + delta[k] if k in delta else v) for k, v in params.items()}


class PhaseRule:
    """enter / step / exit of one node in one phase (see the module docstring)."""

    def __init__(self, node: NodeRule, ph):
        self.node, self.ph = node, ph
        self.proto = node.protocol

    def enter(self, state: dict, params: dict, boundary) -> tuple:
        """Entry hook: the phase's initial state (zeros, or a copy of a saved state, in the phase's dtype), its
        clamped drive, and the first messages a(s_0)."""
        n, ph = self.node, self.ph
        dtype = boundary["dtype"]
        if ph.complex:
            dtype = complex_dtype(dtype)
        if ph.start == "zero":
            s = torch.zeros(boundary["batch"], n.spec.width, dtype=dtype, device=boundary["device"])
        elif ph.start == "carry":
            s = state["s"].to(dtype)
        else:
            s = state["saved"][ph.start].to(dtype).clone()
        a = n.phys.signal(s)
        state = {**state, "s": s, "a": a, "const": n.const(params, boundary, dtype), "dtype": dtype,
                 "xi": n.noise(boundary, ph.name, ph.steps, boundary.get("t0", 0)) if n.noise_std else None}
        state.setdefault("saved", {})
        state.setdefault("mem", {})
        return state, {SIGNAL: a}

    def step(self, state: dict, inbox, params: dict, boundary, t: int) -> tuple:
        """s_{t+1} from s_t and the neighbours' a_t; the protocol's per-step rule first (C-EP style), so the
        transition uses theta + delta."""
        n = self.node
        delta = None
        const = state["const"]
        if n.step_hook:
            mem, g = self.proto.on_step(self.ph, t, state["mem"], self._G(state, inbox, boundary))
            state = {**state, "mem": mem}
            delta = n.sgd(g)
            if delta:
                params = _plus(params, delta)
                if n.const_weights & delta.keys():
                    const = n.const(params, boundary, state["dtype"])
                    state["const"] = const
        beta = boundary["beta"]
        if self.ph.clocked:
            beta = self.proto.step_beta(self.ph, t, beta)
        y = boundary.get("y") if n.is_output else None
        if y is None and beta != 0 and n.is_output:
            raise ValueError(f"node {n.id}, phase {self.ph.name}, step {t}: nudged (beta = {beta}) with no target y")
        xi = state.get("xi")
        s, a = n.advance(state["s"], const, inbox, params, beta, y, state["dtype"], None if xi is None else xi[t])
        return {**state, "s": s, "a": a}, {SIGNAL: a}, delta

    def exit(self, state: dict, inbox, params: dict, boundary, t: int) -> tuple:
        """After the last exchange: the protocol's per-step rule once more (the last transition's change), its
        exit rule (accumulators), and the final state saved under the phase's name."""
        delta = None
        mem = state["mem"]
        if self.node.step_hook:
            mem, g = self.proto.on_step(self.ph, t, mem, self._G(state, inbox, boundary))
            delta = self.node.sgd(g)
        mem = self.proto.on_exit(self.ph, mem, self._G(state, inbox, boundary))
        saved = {**state["saved"], self.ph.name: state["s"]}
        return {**state, "mem": mem, "saved": saved}, delta

    def _G(self, state, inbox, boundary):
        """The learning hooks' view of the node: `G(scale)` = scale * G at its current state and inbox, computed
        only if asked; `G.signals()` = copies of (its own signal, its neighbours' signals per slot) now;
        `G.outer(scale, post, pre)` = the same products as G with the node's own signal replaced by `post` and the
        neighbours' by `pre` (rules that pair a change of one side with a state of the other, such as VF);
        `G.state(field="s")` = the node's own state now (or another field of it, e.g. Dyadic EP's `d`)."""
        node = self.node

        def G(scale=1.0):
            return node.G(state["a"], inbox, boundary, scale)

        def signals():
            return state["a"].clone(), node.pre(inbox)

        def outer(scale, post, pre, synapses=False):
            return node.outer(scale, post, pre, boundary, synapses)

        def own_state(field="s"):
            return state[field]

        G.signals, G.outer, G.state = signals, outer, own_state
        return G
