"""A Hamiltonian node's local rule (docs/algorithms.md §10.2): position-Verlet leapfrog over its own (phi, pi), the
forward pass, the momentum flip and the nudged echoes (nodes/hamiltonian.py declares the models).

One step t of a phase, at every node at once (h = the model's dt, unit masses):

    phi_half = phi + (h/2) pi                      (computed at the end of the previous step, and sent: kind a)
    pi      <- pi + h F(phi_half, neighbours' phi_half, d_t)      F = -dV/dphi, d_t = W u_t + b
    phi     <- phi_half + (h/2) pi

so the force and dH/dtheta are read at the half-step position where the step evaluates them (§10.3, conditions 1
and 2), and a spring's force at both ends uses the same pair of half-step positions. The input u_t is the boundary
sequence x[:, t] in the forward phase and x[:, T-1-t] in the echo (played backwards).

Phases (protocols/rhel.py, protocols/heb.py):
  forward   T steps from the declared initial state; the output node accumulates its loss (and the gradients of
            its readout, which is no part of H) from the state after each step; only (phi_T, pi_T) is kept.
  echo      `flip` on entry: from the node's own saved (phi_T, pi_T), copies side by side (the echo phase's copies, the rows
            copy-major), each with pi <- -pi; T steps with the input reversed, every node adding
            h dV/dtheta(phi_half, d_t) per copy at every step. The output node kicks copy c's momentum,
            pi <- pi + copies[c] eps g_n, on entry (n = T) and after echo step k (n = T - k - 1 >= 1; none after the
            last, which returns to the start): g_n = dl_n/dphi at the copies' reference state (the copy nudged at
            0 if there is one, else their mean: the unnudged echo, exactly, for linear dynamics) against the
            target y_n replayed in reverse. A terminal cost (heb) kicks on entry only.

What a node keeps does not depend on T: its (phi, pi), its half-step positions, its accumulators (one per copy and
parameter) and, at the output, the loss so far and the readout's gradients.

Ablations (Echo.integrator / Echo.collect; refused by rhel and heb, used by the exactness tests): `start-force`
evaluates the force at the start-of-step position (the public NonlinHRU's leapfrog), `euler` is symplectic Euler
(pi += h F(phi); phi += h pi), `collect="full"` reads dH/dtheta at the state after the step (the public LinHRU).
"""
from __future__ import annotations

import torch

from nodes.dynamics import Physics
from nodes.graph import SIGNAL
from nodes.potentials import READOUTS, ce_mean, loss_and_cotangent, onsite_force, onsite_grads, readout_step_grads
from nodes.rules import NodeRule, PhaseRule


def reference(x, copies: tuple, batch: int):
    """The copies' reference (B, w): the copy nudged at 0 if there is one, else the mean of the copies."""
    if len(copies) <= 1:
        return x
    parts = x.reshape(len(copies), batch, -1)
    return parts[copies.index(0)] if 0 in copies else parts.mean(0)


def contrast(values, copies: tuple, eps):
    """-(the least-squares slope of values[c] against the copies' nudges copies[c] * eps), (C, ...) -> (...): the
    gradient from the copies' shares, -(G_+ - G_-)/(2 eps) for copies (1, -1), -(G_+ - G_0)/eps for (0, 1)."""
    m = values.new_tensor(copies)
    c = m - m.mean()
    return -torch.tensordot(c, values, dims=1) / (float((c * c).sum()) * float(eps))


def per_copy_mean(t, copies: int):
    """(C*B, ...) per sample -> (C, ...): the batch mean within each copy."""
    return t.reshape(copies, -1, *t.shape[1:]).mean(1)


class Leapfrog(Physics):
    """Hamiltonian models (nodes/hamiltonian.py): the node's rule (nodes/leapfrog.LeapfrogRule) integrates (phi, pi)
    itself; the signal is a position, no activation."""

    name = "leapfrog"

    def __init__(self, activation: str = "identity", dt: float = 1.0):
        self.activation, self.dt = "identity", float(dt)
        self.k, self.c = 1.0, 0.0

    def signal(self, s):
        return s

    def step(self, s, u, beta=0.0, y=None):
        raise NotImplementedError("a Hamiltonian node steps through nodes/leapfrog.LeapfrogRule")


class LeapfrogRule(NodeRule):
    """The local rule of a node of a Hamiltonian model (nodes/hamiltonian.HamiltonianModel and its Echo). Its terms
    are the Hamiltonian couplings' (nodes/springs.py: HamiltonianTerm), which it asks, in their `order`, for their
    part of the drive d, their force and their dV/dW; it knows no kind of coupling."""

    def __init__(self, spec, protocol, lrs=None, noise=(0.0, 0)):
        super().__init__(spec, protocol, lrs, noise)
        model, group = spec.model, spec.block.group
        echo = getattr(model, "echo", None)
        if echo is None:
            raise ValueError(f"model: {model.name} declares no Hamiltonian (node {self.id})")
        self.echo, self.h, self.kind = echo, float(model.dt), echo.potential[group]
        self.roles = dict(echo.roles.get(group, {}))
        plain = [t.weight for t in spec.terms if not hasattr(t, "dV")]
        if plain:
            raise ValueError(f"model: {model.name}: the terms of {plain} at node {self.id} have no Hamiltonian physics "
                             f"(declare the couplings with nodes/springs.py's Spring and Drive)")
        self.terms = tuple(sorted(spec.terms, key=lambda t: t.order))
        self.couples = any(t.couples for t in self.terms)  # springs: each copy's positions cross to the neighbours
        self.below_slots = tuple(t.slot for t in self.terms if t.reference)  # the layers below, read as inputs
        self.back = spec.backward  # kind g: (source node, W, lo, hi): the input gradient to the layer below
        self.g_slots = tuple(sl.name for sl in spec.slots.values() if sl.kind == "g")
        if self.g_slots and self.couples:  # its kicks land after its per-copy positions went to its spring neighbours
            raise ValueError(f"model: {model.name}: a stacked layer's units are uncoupled (springs and a layer above "
                             f"at node {self.id} are not built)")
        self.clamped = any("x" in t.reads for t in self.terms)
        self.readout = dict(echo.readout) if self.is_output else {}
        self.terminal = bool(getattr(protocol, "terminal", False))
        self.nudge = protocol.settings["nudge"]
        if self.is_output and echo.loss in READOUTS and spec.width != model.group(group).size:
            raise ValueError(f"granularity: loss {echo.loss} reads the whole output group {group}; it runs on one "
                             f"node (layer granularity, split 1), not on node {self.id}")
        if echo.collect == "full" and self.couples:
            raise ValueError(f"model: full-step collection is an ablation for uncoupled layers (node {self.id})")
        lo, hi = spec.block.lo, spec.block.hi
        phi0, pi0 = echo.start.get(group, ((0.0,) * model.group(group).size,) * 2)
        self.start = (torch.tensor(phi0[lo:hi], dtype=torch.float64), torch.tensor(pi0[lo:hi], dtype=torch.float64))

    def phase(self, ph) -> PhaseRule:
        if set(ph.kinds) - {"g"}:
            raise ValueError(f"node {self.id}, phase {ph.name}: a Hamiltonian node carries positions and input "
                             f"gradients only, not kinds {tuple(ph.kinds)}")
        return EchoPhase(self, ph) if getattr(ph, "flip", False) else ForwardPhase(self, ph)

    # ---- the physics -----------------------------------------------------------------------------------------
    def below(self, inbox, copies: tuple, batch: int) -> dict:
        """The half-step positions of the layers below, as this step's input: their copies' reference (the
        unnudged echo, the forward's input reversed) for every copy; {slot: (C*B, width)}."""
        C = len(copies)
        return {slot: inbox[slot] if C <= 1 else reference(inbox[slot], copies, batch).repeat(C, 1)
                for slot in self.below_slots}

    def driving(self, params, x_t, rows: int, below: dict):
        """d_t = the sum of the terms' parts in their order (e.g. W u_t from the input, W phi_half of the layers below
        (`below`), the biases), (rows, width); None when there is none."""
        d = None
        for t in self.terms:
            d = t.drive(d, params[t.weight], x_t, below, rows)
        return d

    def local_params(self, params) -> dict:
        return {role: params[name] for role, name in self.roles.items()}

    def force(self, pos, inbox, params, d):
        """F = -dV/dphi at the node's positions `pos` (B, w) with its neighbours' in the inbox: the onsite part, then
        the terms' own forces (the springs' sum_j k_ij (phi_j - phi_i))."""
        f = onsite_force(self.kind, pos, d, self.local_params(params))
        for t in self.terms:
            f = t.force(f, pos, inbox, params[t.weight])
        return f

    def dH(self, pos, inbox, params, d, x_t, copies: int, below: dict) -> dict:
        """dH/dtheta at positions `pos` for every held parameter, batch mean per copy: {name: (C, *shape)}."""
        out = {}
        g, dd = onsite_grads(self.kind, pos, d, self.local_params(params))
        for role, name in self.roles.items():
            if role in g:
                out[name] = per_copy_mean(g[role], copies)
        for t in self.terms:
            out[t.weight] = t.dV(pos, inbox, dd, x_t, below, copies)
        return out, dd

    def backward(self, dd, params, copies: int) -> dict:
        """Kind g to each layer below: h dV/dd @ W[:, its columns] per copy (the input gradient's share of every
        copy; the receiver forms the contrast)."""
        return {(dst, "g"): (self.h * dd) @ params[w][:, lo:hi] for dst, w, lo, hi in self.back}

    def leap(self, phi, pi, pos, inbox, params, d):
        """One integrator step from (phi, pi); `pos` the position the force reads (phi_half for leapfrog):
        returns (phi', pi')."""
        h, integ = self.h, self.echo.integrator
        f = self.force(pos, inbox, params, d)
        if self.echo.damping:
            f = f - self.echo.damping * pi
        pi = pi + h * f
        if integ == "euler":
            return phi + h * pi, pi
        half = phi + (0.5 * h) * pi if integ == "start-force" else pos
        return half + (0.5 * h) * pi, pi

    def sent(self, phi, pi):
        """What crosses the springs for the next step: phi_half (leapfrog), else phi (the ablations' force)."""
        return phi + (0.5 * self.h) * pi if self.echo.integrator == "leapfrog" else phi


class ForwardPhase(PhaseRule):
    """T steps from the declared initial state; the output node's loss (and readout gradients) along the way."""

    def enter(self, state, params, boundary):
        n, B = self.node, boundary["batch"]
        dtype, dev = boundary["dtype"], boundary["device"]
        x = boundary.get("x")
        _check_sequence(n, self.ph, x, "x")
        phi = n.start[0].to(dev, dtype).expand(B, -1).clone()
        pi = n.start[1].to(dev, dtype).expand(B, -1).clone()
        mem = dict(state.get("mem", {}))
        if n.is_output:
            _check_target(n, self.ph, boundary.get("y"), B)
            mem.update(loss=phi.new_zeros(B), direct={}, mean=phi.new_zeros(phi.shape))
        sent = n.sent(phi, pi)
        state = {**state, "s": torch.stack((phi, pi), 1), "a": sent, "dtype": dtype, "mem": mem}
        state.setdefault("saved", {})
        return state, {SIGNAL: sent}

    def step(self, state, inbox, params, boundary, t):
        n = self.node
        s = state["s"]
        phi, pi = s[:, 0], s[:, 1]
        x = boundary.get("x")
        x_t = x[:, t] if x is not None else None
        d = n.driving(params, x_t, s.shape[0], n.below(inbox, (), s.shape[0]))
        pos = state["a"] if n.echo.integrator == "leapfrog" else phi
        phi, pi = n.leap(phi, pi, pos, inbox, params, d)
        mem = state["mem"]
        if n.is_output:
            mem = _forward_loss(n, mem, phi, boundary, params, t + 1, self.ph.steps)
        sent = n.sent(phi, pi)
        return {**state, "s": torch.stack((phi, pi), 1), "a": sent, "mem": mem}, {SIGNAL: sent}, None

    def exit(self, state, inbox, params, boundary, t):
        n, mem = self.node, state["mem"]
        if n.is_output and n.echo.loss == "ce-mean":
            loss, logits, g, grads = ce_mean(mem["mean"] / self.ph.steps, boundary["y"], _readout(n, params))
            mem = {**mem, "loss": loss, "pred": logits, "cotangent": g / self.ph.steps,
                   "direct": {n.readout[k]: v.mean(0) for k, v in grads.items()}}
        elif n.is_output:
            mem = {**mem, "pred": mem["loss"][:, None]}
        return {**state, "mem": mem, "saved": {**state["saved"], self.ph.name: state["s"]}}, None


class EchoPhase(PhaseRule):
    """The flip on entry, the copies side by side, the reversed input, the kicks and the accumulation of dH/dtheta."""

    def enter(self, state, params, boundary):
        n, ph = self.node, self.ph
        if ph.start not in state.get("saved", {}):
            raise ValueError(f"node {n.id}, phase {ph.name}: the echo starts from the node's saved forward state; "
                             f"there is no phase {ph.start!r} before it")
        B = boundary["batch"]
        x = boundary.get("x")
        _check_sequence(n, ph, x, "x")
        copies = tuple(getattr(ph, "copies", ())) or (1.0,)
        C = len(copies)
        s = state["saved"][ph.start].to(boundary["dtype"]).repeat(C, 1, 1)
        phi, pi = s[:, 0], -s[:, 1]  # the flip
        mult = torch.tensor(copies, dtype=s.dtype, device=s.device).repeat_interleave(B)[:, None]
        mem = {**state.get("mem", {}), "acc": {}, "eps": ph.beta, "copies": copies}
        state = {**state, "mult": mult * ph.beta, "copies": copies, "mem": mem, "dtype": s.dtype}
        if n.is_output:
            pi = pi + self._kick(state, params, phi, boundary, ph.steps)
        sent = n.sent(phi, pi)
        out = {SIGNAL: sent}
        out.update({(dst, "g"): phi.new_zeros(phi.shape[0], hi - lo) for dst, _, lo, hi in n.back})  # no step yet
        return {**state, "s": torch.stack((phi, pi), 1), "a": sent}, out

    def _kick(self, state, params, phi, boundary, at: int):
        """copies[c] * eps * g_at for every copy, g at the copies' reference state against y_at (forward time)."""
        n, copies = self.node, state["copies"]
        B = boundary["batch"]
        if n.echo.loss == "ce-mean":
            g = state["mem"]["cotangent"]
        else:
            weight = 1.0 if n.terminal else n.h
            y = boundary.get("y")
            y = None if y is None else y[:, at - 1]
            if n.nudge == "own":  # each copy from its own state: the nudged Hamiltonian H + eps l of each echo
                _, g = loss_and_cotangent(n.echo.loss, phi, None if y is None else y.repeat(len(copies), 1), weight,
                                          _readout(n, params))
                return state["mult"] * g
            _, g = loss_and_cotangent(n.echo.loss, reference(phi, copies, B), y, weight, _readout(n, params))
        return state["mult"] * g.repeat(len(copies), 1)

    def step(self, state, inbox, params, boundary, t):
        n, T = self.node, self.ph.steps
        s = state["s"]
        phi, pi = s[:, 0], s[:, 1]
        C = len(state["copies"])
        x = boundary.get("x")
        x_t = x[:, T - 1 - t].repeat(C, 1) if x is not None else None
        below = n.below(inbox, state["copies"], boundary["batch"])
        d = n.driving(params, x_t, s.shape[0], below)
        pos = state["a"] if n.echo.integrator == "leapfrog" else phi
        if n.g_slots and C > 1:  # the layer above's input gradient for the last step's half-step position
            phi, pi = self._inner_kick(state, inbox, phi, pi)
            pos = n.sent(phi, pi) if n.echo.integrator == "leapfrog" else phi
        start = phi + (0.5 * n.h) * pi
        phi, pi = n.leap(phi, pi, pos, inbox, params, d)
        if n.echo.collect == "full":
            g, dd = n.dH(phi, inbox, params, d, x_t, C, below)
        else:
            g, dd = n.dH(pos if n.echo.integrator == "leapfrog" else start, inbox, params, d, x_t, C, below)
        acc = state["mem"]["acc"]
        if C > 1:  # each copy's share less the copies' mean: the estimate (a contrast) is unchanged, and the sums
            g = {k: v - v.mean(0) for k, v in g.items()}  # stay O(eps) instead of cancelling O(1) sums at the end
        acc = {k: (v * n.h if k not in acc else acc[k].add_(v, alpha=n.h)) for k, v in g.items()}
        at = T - t - 1
        if n.is_output and at >= 1 and not n.terminal:
            pi = pi + self._kick(state, params, phi, boundary, at)
        sent = n.sent(phi, pi)
        out = {SIGNAL: sent}
        if n.back:
            out.update(n.backward(dd, params, C))
        return {**state, "s": torch.stack((phi, pi), 1), "a": sent, "mem": {**state["mem"], "acc": acc}}, out, None

    def _inner_kick(self, state, inbox, phi, pi):
        """The layer above's input gradient for this node's last half-step position, g = -(slope of its copies'
        shares q_c against their nudges), as the kick inside that step, applied now: pi += c eps g, and
        phi += (h/2) c eps g for the half drift that followed it."""
        n, copies = self.node, state["copies"]
        q = None
        for slot in n.g_slots:
            q = inbox[slot].clone() if q is None else q + inbox[slot]
        C = len(copies)
        g = contrast(q.reshape(C, -1, q.shape[1]), copies, self.ph.beta)
        delta = state["mult"] * g.repeat(C, 1)
        return phi + (0.5 * n.h) * delta, pi + delta

    def exit(self, state, inbox, params, boundary, t):
        return {**state, "saved": {**state["saved"], self.ph.name: state["s"]}}, None


def _readout(n, params) -> dict:
    return {role: params[name] for role, name in n.readout.items()}


def _forward_loss(n, mem, phi, boundary, params, at: int, T: int) -> dict:
    """The output node's loss bookkeeping after forward step `at` (1-based): the per-step loss and the gradients of
    a per-step readout, or the running sum for ce-mean's time-mean; a terminal cost reads the last step only."""
    loss = n.echo.loss
    if loss == "ce-mean":
        return {**mem, "mean": mem["mean"] + phi}
    if n.terminal and at != T:
        return mem
    y = boundary.get("y")
    weight = 1.0 if n.terminal else n.h
    readout = _readout(n, params)
    val, _ = loss_and_cotangent(loss, phi, None if y is None else y[:, at - 1], weight, readout, cotangent=False)
    direct = dict(mem["direct"])
    for k, v in readout_step_grads(loss, phi, weight, readout).items():
        name = n.readout[k]
        direct[name] = direct.get(name, 0.0) + v.mean(0)
    return {**mem, "loss": mem["loss"] + val, "direct": direct}


def _check_sequence(n, ph, x, name):
    if x is None and n.clamped:
        raise ValueError(f"{name}: node {n.id}, phase {ph.name}: its drive reads the input sequence; none was given")
    if x is not None and (x.dim() != 3 or x.shape[1] != ph.steps):
        raise ValueError(f"{name}: node {n.id}, phase {ph.name}: expected a sequence (B, T = {ph.steps}, d), got shape "
                         f"{tuple(x.shape)}")


def _check_target(n, ph, y, B):
    loss = n.echo.loss
    if loss == "sin-sum" or loss == "sin-readout":
        return
    if y is None:
        raise ValueError(f"y: node {n.id}, phase {ph.name}: loss {loss} needs a target")
    if loss == "ce-mean":
        if y.dim() != 2 or y.shape[0] != B:
            raise ValueError(f"y: node {n.id}: loss ce-mean takes one-hot classes (B, k), got {tuple(y.shape)}")
        return
    if y.dim() != 3 or y.shape[1] != ph.steps or y.shape[2] != n.spec.width:
        raise ValueError(f"y: node {n.id}, phase {ph.name}: expected a target sequence (B, T = {ph.steps}, "
                         f"{n.spec.width}), got shape {tuple(y.shape)}")
