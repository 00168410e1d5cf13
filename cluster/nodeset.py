"""The logical nodes one process runs: their rules, the tensors each holds, their optimisers and phase states.

Shared by a fabric host (cluster/runtime/host.py: the nodes placed on one Ray actor) and the in-process engine
(cluster/inprocess.py: every node of a partition). Each node holds its own copies (the owner's rows, the replica's
columns), updates them with its own optimiser from its own estimate, and keeps its phase state (nodes/rules.py).
`boundary(i, phase)` is what node i's rule may read: the signals the model routes to it (x, y) and the globals
(beta, batch size, dtype); anything else is a LocalityError naming node, phase and step.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from cluster.messages import pack_arrays, unpack_arrays
from nodes.dynamics import check_due, divergence
from nodes.optim import Optimizer
from nodes.rules import Guarded, rule_of


def pack_held(params: dict, opt, lineage=None) -> bytes:
    """A checkpoint of tensors and their optimiser state: `param/<name>` and `opt/<key>` arrays, and a node's
    lineage (an (n, 2) int64 array of [batch, update hash]) when given."""
    extra = {} if lineage is None else {"lineage": torch.tensor(lineage, dtype=torch.int64).reshape(-1, 2)}
    return pack_arrays({**{f"param/{k}": v for k, v in params.items()},
                        **{f"opt/{k}": v for k, v in opt.get_state().items()}, **extra})


def unpack_held(packed: bytes) -> tuple:
    """(params, optimiser state) from pack_held's bytes."""
    flat = unpack_arrays(packed)
    return ({k[6:]: v for k, v in flat.items() if k.startswith("param/")},
            {k[4:]: v for k, v in flat.items() if k.startswith("opt/")})


def update_hash(params: dict) -> int:
    """A 64-bit hash (blake2b, as a signed int64) of a node's held tensors after an update: equal lineages mean
    bit-identical updates."""
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(params):
        h.update(k.encode())
        h.update(memoryview(params[k].detach().cpu().contiguous().numpy()).cast("B"))
    return int.from_bytes(h.digest(), "little", signed=True)


def _nan(v):
    """v with every tensor in it (dicts, tuples, sums of G's) replaced by NaNs of its shape."""
    if isinstance(v, torch.Tensor):
        return torch.full_like(v, float("nan"))
    if isinstance(v, Mapping):
        return {k: _nan(v[k]) for k in v}
    if isinstance(v, (tuple, list)):
        return type(v)(_nan(x) for x in v)
    return v


def _flat(v, prefix: str = "") -> dict:
    """{path: tensor} for every tensor in v (mappings, among them sums of G's, tuples, lists), paths joined by "."."""
    if isinstance(v, torch.Tensor):
        return {prefix: v}
    if isinstance(v, Mapping):
        items = [(str(k), x) for k, x in v.items()]
    elif isinstance(v, (tuple, list)):
        items = [(str(n), x) for n, x in enumerate(v)]
    else:
        return {}
    out = {}
    for k, x in items:
        out.update(_flat(x, f"{prefix}.{k}" if prefix else k))
    return out


def recorded(rec: dict) -> dict:
    """One node's recorded phase ({"s": [...], "a": [...]}, s_0 .. s_T and the signals a_0 .. a_T it sent) as
    {"s": (T+1, B, ...), "a": (T+1, B, ...)}."""
    return {k: torch.stack(v) for k, v in rec.items()}


def per_sample_max(residuals) -> list:
    """The element-wise max of per-sample residual lists (one per node or host): the batch's residual per sample."""
    return [max(r) for r in zip(*residuals)]


class PhaseError(RuntimeError):
    """A phase failed at a node (timeout, divergence, abort); the text names node, phase and step."""


class Aborted(PhaseError):
    pass


class NodeSet:
    def __init__(self, specs: dict, protocol, dtype=torch.float64, lrs: dict | None = None, optimizer: str = "sgd",
                 momentum: float = 0.0, diverge_limit: float = 1e6, device="cpu", forget_free: bool = False,
                 noise: float = 0.0, seed: int = 0, gate: bool = False):
        """specs {node id: NodeSpec}; lrs {parameter: learning rate}; forget_free: the free-phase-memory test
        (`forget`); noise, seed: the std and seed of the pre-activation noise (nodes/noise.py), drawn in the
        phases of a batch set with a `draw`; gate: the convergence gate is on (`residual_tol`), so a sample that
        diverges in a nudged phase is reported (residual inf) instead of failing the phase."""
        self.specs, self.protocol, self.dtype, self.device = dict(specs), protocol, dtype, torch.device(device)
        self.ids = tuple(self.specs)
        lrs = lrs or {}
        self.lrs = {i: {k: float(lrs.get(h.param, 0.0)) for k, h in s.held.items()} for i, s in self.specs.items()}
        self.rules = {i: rule_of(s, protocol, self.lrs[i], (noise, seed)) for i, s in self.specs.items()}
        self.noise = float(noise)
        self.draw = None  # the batch's serial (a global clock signal), keys the noise; None: no noise
        self.params = {i: {k: torch.zeros(self._shape(s, h), dtype=dtype, device=self.device)
                           for k, h in s.held.items()}
                       for i, s in self.specs.items()}
        self.opts = {i: Optimizer(optimizer, momentum) for i in self.ids}
        self.lineages = {i: [] for i in self.ids}  # node -> [(batch serial, update hash)], the updates it applied
        self.state = {i: {} for i in self.ids}
        self.routed = {i: {} for i in self.ids}   # node -> {boundary key: tensor}
        self.batch = 0
        self.diverge_limit = diverge_limit
        self.forget_free = bool(forget_free)
        self.gate = bool(gate)
        self.blown = {}  # node -> (B,) bool: samples that diverged in this nudged phase (gate on)
        self.forgotten = {i: {} for i in self.ids}  # node -> {buffer: what it held}, this batch
        self._s0_held = {}

    @staticmethod
    def _shape(spec, h):
        full = spec.model.param_shapes()[h.param]
        rows = full[0] if h.rows is None else h.rows[1] - h.rows[0]
        if len(full) == 1:
            return (rows,)
        return (rows, full[1] if h.cols is None else h.cols[1] - h.cols[0])

    # ---- parameters, boundary, checkpoints ---------------------------------------------------------------
    def set_held(self, held: dict) -> None:
        """held {node: {local: tensor}} (copies are taken)."""
        for i, tensors in held.items():
            for k, v in tensors.items():
                want = self.params[i][k].shape
                if tuple(v.shape) != tuple(want):
                    raise ValueError(f"node {i}: set_params {k} has shape {tuple(v.shape)}, expected {tuple(want)}")
                self.params[i][k] = v.detach().to(self.device, self.dtype).clone().contiguous()

    def set_routed(self, i: str, arrays: dict) -> None:
        """The boundary signals for node i (only keys the model routes to it are kept: see `boundary`)."""
        self.routed[i] = {k: v.to(self.device, self.dtype) for k, v in arrays.items() if k in self.specs[i].boundary}
        self.rules[i].const_cache = None  # a new boundary: the clamped drive is computed afresh

    def boundary(self, i: str, phase) -> Guarded:
        b = {**self.routed[i], "beta": phase.beta, "batch": self.batch, "dtype": self.dtype, "device": self.device,
             "draw": self.draw}
        return Guarded(b, f"node {i}, phase {phase.name}", "boundary")

    def noiseless(self) -> bool:
        """Whether this batch's phases run without noise (no std, or no draw)."""
        return not self.noise or self.draw is None

    def commit(self, i: str, delta) -> None:
        """theta += delta on node i's own tensors (a rule's per-step change; parameters are real)."""
        if delta:
            for k, d in delta.items():
                if d.is_complex():
                    raise PhaseError(f"node {i}: the change of {k} is complex; parameters are real")
                self.params[i][k].add_(d)

    def pack_state(self, i: str) -> bytes:
        """Node i's checkpoint: held tensors, optimiser state, lineage."""
        return pack_held(self.params[i], self.opts[i], self.lineages[i])

    def load_state(self, i: str, packed: bytes) -> None:
        params, opt = unpack_held(packed)
        self.set_held({i: params})
        self.opts[i].set_state(opt)
        lineage = unpack_arrays(packed).get("lineage")
        self.lineages[i] = [] if lineage is None else [tuple(r) for r in lineage.tolist()]

    def kept_bytes(self, i: str) -> int:
        """Bytes of the tensors node i keeps: its parameters, its optimiser's state and its phase state (states,
        signals, accumulators, saved states), each storage once; not the boundary signals it is fed (x, y)."""
        seen = {}

        def walk(v):
            if isinstance(v, torch.Tensor):
                st = v.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
            elif isinstance(v, Mapping):
                for x in v.values():
                    walk(x)
            elif isinstance(v, (tuple, list)):
                for x in v:
                    walk(x)
        walk(self.params[i])
        walk(self.opts[i].get_state())
        walk(self.state[i])
        return int(sum(seen.values()))

    # ---- the learning rule's end of a batch ---------------------------------------------------------------
    def begin_all(self) -> None:
        """A new batch: every node's accumulators start empty."""
        for i in self.ids:
            self.state[i] = {**self.state[i], "mem": {}}
            self.forgotten[i] = {}

    def estimate_of(self, i: str) -> dict:
        """The protocol's g_hat from node i's accumulators; a non-finite one is an error that names what it lacked."""
        est = self.protocol.estimate(self.state[i].get("mem", {}), self.params[i])
        if est and not bool(torch.isfinite(torch.cat([v.reshape(-1) for v in est.values()])).all()):
            bad = [k for k, v in est.items() if not bool(torch.isfinite(v).all())]
            why = (f": it reads the free phase, which this node forgot once the nudged phase had moved off s0 "
                   f"(forget_free=true: {', '.join(self.forgotten[i].values())}); protocol {self.protocol.name} "
                   f"keeps a free-phase memory") if self.forgotten[i] else ""
            raise PhaseError(f"node {i}: the estimate of {', '.join(bad)} is not finite{why}")
        return est

    def forget(self, i: str, phase) -> None:
        """The free-phase-memory test (forget_free): once the nudged phase has taken its first two steps from s0
        (so a rule local in time has used the pair s0, s1), every buffer of node i that still holds s0 or
        something computed from it is overwritten with NaN: the saved start state and the accumulator entries not
        replaced since step 0."""
        st = self.state[i]
        saved = dict(st.get("saved", {}))
        if phase.start in saved:
            saved[phase.start] = _nan(saved[phase.start])
            self.forgotten[i][phase.start] = f"saved state {phase.start!r} (s0)"
        mem = dict(st.get("mem", {}))
        for k, v in mem.items():
            if self._s0_held[i].get(k) is v:
                mem[k] = _nan(v)
                self.forgotten[i][k] = f"accumulator {k!r} (from s0)"
        self.state[i] = {**st, "saved": saved, "mem": mem}

    def update_of(self, i: str) -> None:
        """The optimiser step on node i's held tensors from its own estimate (none if the protocol changed the
        parameters inside its phases)."""
        if not self.protocol.updates_in_phases:
            self.opts[i].step(self.params[i], self.estimate_of(i), self.lrs[i])
        if self.draw is not None:  # a training batch: its serial and the update's hash join the node's lineage
            self.lineages[i].append((self.draw, update_hash(self.params[i])))

    def prediction(self, i: str, program):
        """Node i's prediction after a training batch (the protocol's, from the node's own phase state)."""
        return self.protocol.prediction(self.state[i], program)

    def saved(self, i: str, name: str):
        return self.state[i]["saved"][name]

    def accumulators_of(self, i: str) -> dict:
        """Node i's accumulators (the protocol's `mem`) as {path: tensor}, detached copies: nested entries joined
        with "." (the default rule's sum of G's: `acc.<held tensor>`); what is not a tensor is left out."""
        return {k: v.detach().cpu().clone() for k, v in _flat(self.state[i].get("mem", {})).items()}

    # ---- a phase's entry, one node's step and exit, as both runners drive them ---------------------------------
    def enter_all(self, phase, record_states=False, record_grads=False) -> tuple:
        """Every node enters `phase`: (its PhaseRules, boundaries, first outboxes, state and G records or None)."""
        rules = {i: self.rules[i].phase(phase) for i in self.ids}
        bnd = {i: self.boundary(i, phase) for i in self.ids}
        for i in self.ids:
            if phase.start in self.forgotten[i]:
                raise PhaseError(f"node {i}, phase {phase.name}: starts from the saved state {phase.start!r}, which "
                                 f"this node forgot (forget_free=true); protocol {self.protocol.name} keeps a "
                                 f"free-phase memory")
        outs = {}
        for i in self.ids:
            self.state[i], outs[i] = rules[i].enter(self.state[i], self.params[i], bnd[i])
        self.blown = {}
        rec_s = {i: {"s": [self.state[i]["s"]], "a": [self.state[i]["a"]]} for i in self.ids} if record_states else None
        rec_g = {i: [] for i in self.ids} if record_grads else None
        return rules, bnd, outs, rec_s, rec_g

    def step_node(self, i: str, rule, inbox, bnd, phase, t: int, rec_s=None, rec_g=None) -> tuple:
        """Node i's step t of `phase` through its PhaseRule: G recorded first if asked (the GDU series), the step, its
        parameter change committed, the divergence check. Returns (outbox, residual at the last step or None)."""
        if rec_g is not None:
            rec_g[i].append(self.rules[i].G(self.state[i]["a"], inbox, bnd))
        last = t + 1 == phase.steps
        prev = self.rules[i].checked(self.state[i]) if last else None
        self.state[i], out, delta = rule.step(self.state[i], inbox, self.params[i], bnd, t)
        if delta:
            self.commit(i, delta)
        if self.forget_free and t < 2 and phase.beta != 0 and phase.start in self.state[i]["saved"]:
            if t == 0:
                self._s0_held[i] = dict(self.state[i].get("mem", {}))
            else:
                self.forget(i, phase)
        r = self.check(i, phase, t + 1, phase.steps, prev) if last or check_due(t + 1, phase.steps) else None
        if rec_s is not None:
            rec_s[i]["s"].append(self.state[i]["s"])
            rec_s[i]["a"].append(self.state[i]["a"])
        return out, r

    def exit_node(self, i: str, rule, inbox, bnd, phase, rec_g=None) -> None:
        """Node i after the phase's last exchange: G recorded if asked, the rule's exit, its parameter change."""
        if rec_g is not None:
            rec_g[i].append(self.rules[i].G(self.state[i]["a"], inbox, bnd))
        self.state[i], delta = rule.exit(self.state[i], inbox, self.params[i], bnd, phase.steps)
        self.commit(i, delta)

    def check(self, i: str, phase, t: int, steps: int, prev=None):
        """Divergence check of node i's state after step t (every CHECK_EVERY steps and the last). At the last step,
        with the state before it as `prev`, it returns the per-sample residual max_units |s_T - s_{T-1}| (B,) too,
        from the same host sync. With the gate on, a nudged phase's diverged samples (non-finite or max |s| above
        the limit at any check) get residual inf instead of failing the phase; the free phase still fails."""
        if not check_due(t, steps):
            return None
        s = self.rules[i].checked(self.state[i])
        if not s.numel():
            return torch.zeros(s.shape[0], dtype=torch.float64) if prev is not None else None
        if prev is None:  # between the first and the last step: max |s| alone (one reduction, one host sync)
            residual, bad = None, divergence(s, self.diverge_limit, float(s.abs().max()))
            if not bad:
                return None
        rows = s.abs().flatten(1).amax(1)
        if prev is not None:
            res = torch.cat([rows.max()[None], (s - prev).abs().flatten(1).amax(1)])
            res = res.to("cpu", torch.float64)  # the one host sync
            m, residual = float(res[0]), res[1:]
            if len(residual) > self.batch > 0:  # copies side by side: the worst per sample
                residual = residual.reshape(-1, self.batch).amax(0)
            bad = divergence(s, self.diverge_limit, m)
        if bad and self.gate and (phase.complex or phase.beta != 0):
            row = rows.to("cpu", torch.float64)
            blown = ~(row <= self.diverge_limit)   # NaN rows too
            self.blown[i] = blown | self.blown.get(i, blown)
            bad = None
        if bad:
            raise PhaseError(f"node {i}, phase {phase.name}, step {t}: state {bad}")
        if residual is not None and i in self.blown:
            residual = torch.where(self.blown[i], torch.inf, residual)
        return residual
