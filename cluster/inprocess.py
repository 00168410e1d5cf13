"""The in-process engine: the same local rules (nodes/rules.py) on one partition, messages passed by reference.

Every logical node of the partition (the layer partition unless told otherwise) runs here with its own tensors
(owner rows, replica columns), optimiser and phase state (cluster/nodeset.py), exactly as on a fabric host; what
differs is only the routing: a node's inbox is built from its neighbours' outboxes directly, with no copies,
checks or log. `relax` runs the same rules with the parameters as shared views of one dict, so autograd through it
is BPTT (cluster/truth/bptt.py). Phases that record nothing run on fixed buffers (cluster/captured.py: a CUDA graph per
phase signature on a GPU, the same body eagerly elsewhere).
"""
from __future__ import annotations

import torch

from cluster.captured import StaticLoop
from cluster.engine import Engine
from cluster.nodeset import NodeSet, recorded
from nodes.dynamics import CHECK_EVERY
from nodes.graph import carried, slice_params, target_of
from nodes.rules import Guarded, rule_of, step_series
from protocols import get_protocol
from protocols.base import Phase, Protocol

PHYSICS_ONLY = Protocol()  # no learning rule: relax runs the physics alone


class Router:
    """Inboxes from outboxes, by reference: slot parts (src, lo, hi) side by side, one source without a copy."""

    def __init__(self, specs: dict):
        self.plan = {i: tuple((name, sl.kind, tuple(i if src == "self" else src for src, _, _ in sl.parts),
                               None if sl.tiled else (sl.width, sl.parts))
                              for name, sl in s.slots.items()) for i, s in specs.items()}

    @staticmethod
    def _join(pieces: list, gaps):
        if gaps is None:  # the parts tile the slot
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        width, parts = gaps  # a mask's gaps: columns no neighbour sends stay zero
        out = pieces[0].new_zeros(pieces[0].shape[0], width)
        for (_, lo, hi), p in zip(parts, pieces):
            out[:, lo:hi] = p
        return out

    def inbox(self, i: str, outs: dict, where: str, kinds=()) -> Guarded:
        """Each source's payload for this node: its port's own ((i, kind) in the outbox) or its kind's; the slots of
        the signal and of the phase's extra `kinds` only."""
        live = carried(kinds)
        return Guarded({name: self._join([outs[j].get((i, kind), outs[j].get(kind)) for j in srcs], gaps)
                        for name, kind, srcs, gaps in self.plan[i] if kind in live}, where, "port")

    def signals(self, i: str, a: dict) -> dict:
        """The fast path of a step whose only messages are signals: {slot: tensor} from {node: a(s)}."""
        return {name: self._join([a[j] for j in srcs], gaps) for name, _, srcs, gaps in self.plan[i]}


def relax(model, params, x, steps, s=None, beta=0.0, y=None, params_at=None, on_step=None, check=None,
          noise=None, t0=0):
    """`steps` synchronous steps of every dynamic group from `s` (zeros if None); returns the list of group states.

    The layer partition's rules with the parameters as views of `params` (or of `params_at(t)`, the parameters of
    transition t: BPTT's per-step copies), so autograd differentiates the very arithmetic the nodes run.
    `on_step(t, s)` sees every state s_t, t = 1..steps; `check(t, s)` may raise on divergence.
    noise (std, seed, draw): the pre-activation noise the nodes draw in the free phase of batch `draw`, from its
    step t0 on (nodes/noise.py), so BPTT differentiates the very noisy trajectory the nodes ran.
    """
    specs = model.node_specs(model.partition("layer"))
    ids = list(specs)
    router = Router(specs)
    std, seed, draw = noise if noise else (0.0, 0, None)
    phase = Phase("free", steps, beta, "zero" if s is None else "carry")
    rules = {i: rule_of(sp, PHYSICS_ONLY, noise=(std, seed)).phase(phase) for i, sp in specs.items()}
    routed = {i: {k: v for k, v in (("x", x), ("y", y)) if k in sp.boundary and v is not None}
              for i, sp in specs.items()}
    bnd = {}
    for i, sp in specs.items():
        if "y" in routed[i]:
            routed[i]["y"] = target_of(sp, routed[i]["y"])
        bnd[i] = Guarded({**routed[i], "beta": beta, "batch": x.shape[0], "dtype": x.dtype, "device": x.device,
                          "draw": draw, "t0": t0}, f"node {i}, phase relax", "boundary")
    views = {}

    def held(t):
        p = params if params_at is None else params_at(t)
        if id(p) not in views:
            views[id(p)] = (p, {i: slice_params(sp, p, copy=False) for i, sp in specs.items()})
        return views[id(p)][1]

    start = {} if s is None else {i: {"s": s[n]} for n, i in enumerate(ids)}
    state, outs = {}, {}
    for i in ids:
        state[i], outs[i] = rules[i].enter(start.get(i, {}), held(0)[i], bnd[i])
    consts = {}
    for t in range(steps):
        p = held(t)
        boxes = {i: router.inbox(i, outs, f"node {i}, phase relax, step {t}") for i in ids}
        for i in ids:
            c = consts.get((id(p), i))
            if c is None:  # the clamped drive of this transition's parameters (BPTT copies get their own)
                c = consts[(id(p), i)] = rules[i].node.const(p[i], bnd[i], x.dtype)
            state[i] = {**state[i], "const": c}
            state[i], outs[i], _ = rules[i].step(state[i], boxes[i], p[i], bnd[i], t)
        group_states = [state[i]["s"] for i in ids]
        if check is not None:
            check(t + 1, group_states)
        if on_step is not None:
            on_step(t + 1, group_states)
    return [state[i]["s"] for i in ids]


class ReferenceEngine(Engine):
    """The engine interface (cluster/engine.py) in one process."""

    name = "reference"

    def __init__(self, model, protocol, dtype=torch.float64, lrs=None, optimizer="sgd", momentum=0.0,
                 device="cpu", diverge_limit=1e6, capture=True, granularity="layer", split=1, forget_free=False,
                 noise=0.0, seed=0, residual_tol=None):
        """lrs {parameter: learning rate}; capture: on CUDA, replay phases as CUDA graphs (cluster/captured.py);
        noise, seed: the pre-activation noise (nodes/noise.py); residual_tol: the convergence gate is on."""
        proto = get_protocol(protocol)
        specs = model.node_specs(model.partition(granularity, split), proto.ports)
        super().__init__(model, proto, specs)
        self.nodes = NodeSet(specs, self.protocol, dtype, lrs, optimizer, momentum, diverge_limit, device, forget_free,
                             noise, seed, residual_tol is not None)
        self.dtype, self.device = dtype, torch.device(device)
        self.router = Router(specs)
        self.capture = bool(capture) and self.device.type == "cuda"
        self.loops = {}  # phase signature -> (StaticLoop, its buffers' owner tree); dropped when params are rebound

    # ---- parameters, boundary, checkpoints ----------------------------------------------------------------
    def set_params(self, params: dict) -> None:
        self.nodes.set_held({i: slice_params(s, params) for i, s in self.specs.items()})
        self.loops.clear()

    def _held(self) -> dict:
        return {i: {k: v.detach().cpu().clone() for k, v in p.items()} for i, p in self.nodes.params.items()}

    def _estimates(self) -> dict:
        return {i: {k: v.cpu() for k, v in self.nodes.estimate_of(i).items()} for i in self.nodes.ids}

    def get_state(self) -> dict:
        return {i: self.nodes.pack_state(i) for i in self.nodes.ids}

    def set_state(self, states: dict) -> None:
        for i, packed in states.items():
            self.nodes.load_state(i, packed)
        self.loops.clear()

    def set_batch(self, x, y=None, draw=None) -> None:
        x = torch.as_tensor(x)
        self.nodes.batch = int(x.shape[0])
        self.nodes.draw = draw
        for i, s in self.specs.items():
            arrays = {"x": x}
            if y is not None:
                arrays["y"] = target_of(s, torch.as_tensor(y))
            self.nodes.set_routed(i, arrays)

    def begin(self) -> None:
        self.nodes.begin_all()

    def update(self) -> None:
        for i in self.nodes.ids:
            self.nodes.update_of(i)

    def output(self, name: str = "free"):
        return self._output_of({i: self.nodes.saved(i, name) for i in self.nodes.ids if self.specs[i].is_output})

    def prediction(self, program):
        return self._output_of({i: self.nodes.prediction(i, program) for i in self.nodes.ids if self.specs[i].is_output})

    def lineage(self) -> dict:
        return {i: list(v) for i, v in self.nodes.lineages.items()}

    def message_logs(self, clear: bool = False) -> dict:
        return {"nodes": {}, "refused": [], "unknown": [], "placement": {}}

    def states(self, name: str) -> list:
        return self._groups({i: self.nodes.saved(i, name) for i in self.nodes.ids}, dim=-1)

    def kept_bytes(self) -> dict:
        return {i: self.nodes.kept_bytes(i) for i in self.nodes.ids}

    def accumulators(self) -> dict:
        return {i: self.nodes.accumulators_of(i) for i in self.nodes.ids}

    def close(self) -> None:
        self.loops.clear()

    # ---- phases --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run_phase(self, phase, record_states: bool = False, record_grads: bool = False) -> dict:
        ns, ids = self.nodes, self.nodes.ids
        rules, bnd, outs, rec_s, rec_g = ns.enter_all(phase, record_states, record_grads)
        steps = phase.steps
        done = 0
        if steps > 1 and not (record_states or record_grads) and self._capturable(phase):
            outs = self._run_static(phase, rules, bnd, steps - 1)
            done = steps - 1
        residual = torch.zeros(ns.batch, dtype=torch.float64)  # per sample, max over nodes, at the last step
        node, worst = ids[0], -1.0  # the node with the largest residual
        for t in range(done, steps):
            boxes = {i: self.router.inbox(i, outs, f"node {i}, phase {phase.name}, step {t}", phase.kinds)
                     for i in ids}
            for i in ids:
                outs[i], r = ns.step_node(i, rules[i], boxes[i], bnd[i], phase, t, rec_s, rec_g)
                if r is not None:
                    residual = torch.maximum(residual, r)
                    if len(r) and float(r.max()) > worst:
                        node, worst = i, float(r.max())
        boxes = {i: self.router.inbox(i, outs, f"node {i}, phase {phase.name}, step {steps}", phase.kinds)
                 for i in ids}
        for i in ids:
            ns.exit_node(i, rules[i], boxes[i], bnd[i], phase, rec_g)
        out = {"residual": float(residual.max()) if len(residual) else 0.0, "residuals": residual.tolist(),
               "node": node}
        if record_states:
            rec = {i: recorded(v) for i, v in rec_s.items()}
            out["states"] = [t.cpu() for t in self._groups({i: v["s"] for i, v in rec.items()}, dim=-1)]
            out["signals"] = {i: v["a"].cpu() for i, v in rec.items()}
        if record_grads:
            out["grad_steps"] = self._series({i: step_series(v, phase.beta) for i, v in rec_g.items()})
        return out

    def _capturable(self, phase) -> bool:
        """Fixed buffers need a step that changes only s and a, sent alike on every port: the default rule, no
        per-step learning rule, real arithmetic."""
        return (self.model.rule is None and self.protocol.rule is None and not self.protocol.has_step_rule and not phase.complex
                and not self.nodes.forget_free and self.nodes.noiseless())

    def _run_static(self, phase, rules, bnd, n: int) -> dict:
        """n steps of the phase on the StaticLoop of its signature (batch size, beta, which nodes hold y), checked for divergence after
        each chunk of CHECK_EVERY steps (the eager path's schedule). The loop owns fixed buffers for everything its
        body reads that changes between runs: the states and signals (its carry), each node's clamped drive and
        target; parameters are read as bound (in-place optimiser updates reach it; set_params drops the loops)."""
        ns, ids = self.nodes, self.nodes.ids
        key = (ns.batch, phase.beta, tuple("y" in ns.routed[i] for i in ids))  # a target routed or not
        if key not in self.loops:
            fixed = {i: {k: v.clone() for k, v in (("const", ns.state[i]["const"]), ("y", bnd[i].get("y")))
                         if v is not None} for i in ids}
            dtype = ns.state[ids[0]]["dtype"]

            nodes = [(k, i, ns.rules[i], ns.params[i], fixed[i]["const"], fixed[i].get("y")) for k, i in enumerate(ids)]
            router, beta = self.router, phase.beta

            def body(carry):  # one synchronous step of every node: NodeRule.advance, the physics PhaseRule.step runs
                a = {i: carry[2 * k + 1] for k, i, *_ in nodes}
                new = []
                for k, i, rule, params, const, y in nodes:
                    new += rule.advance(carry[2 * k], const, router.signals(i, a), params, beta, y, dtype)
                return new

            carry = [t.clone() for i in ids for t in (ns.state[i]["s"], ns.state[i]["a"])]
            self.loops[key] = (StaticLoop(body, carry, CHECK_EVERY, self.capture), fixed)
        loop, fixed = self.loops[key]
        for k, i in enumerate(ids):
            fixed[i]["const"].copy_(ns.state[i]["const"])
            if "y" in fixed[i]:
                fixed[i]["y"].copy_(bnd[i]["y"])
            loop.state[2 * k].copy_(ns.state[i]["s"])
            loop.state[2 * k + 1].copy_(ns.state[i]["a"])
        for t in loop.chunks(n):
            for k, i in enumerate(ids):
                ns.state[i] = {**ns.state[i], "s": loop.state[2 * k]}
                ns.check(i, phase, t, phase.steps)
        outs = {}
        for k, i in enumerate(ids):
            ns.state[i] = {**ns.state[i], "s": loop.state[2 * k].clone(), "a": loop.state[2 * k + 1].clone()}
            outs[i] = {"a": ns.state[i]["a"]}
        return outs
