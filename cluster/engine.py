"""The one engine interface, shared by the in-process engine (cluster/inprocess.py) and the fabric
(cluster/runtime/coordinator.py), so experiments and tests run unchanged on either.

    set_params(full) / get_params() -> full         the owners' copies, assembled
    set_batch(x, y=None, draw=None)                  boundary signals, routed per node; draw: the batch's serial
                                                     (keys the noise, nodes/noise.py; None: no noise)
    begin()                                          empty accumulators in every node
    run_phase(phase, record_states=False, record_grads=False) -> {"residual", "residuals" (per sample),
                                                                  ["states"], ["signals"], ["grad_steps"]}
        states: per dynamic group in declaration order, (T+1, B, units) (s_0 .. s_T; a two-field layout
        (T+1, B, 2, units)); signals: per node, (T+1, B, width): the signal a_t it sent on every out-port at step t
        (kind `a`). A phase with start "carry" continues from every node's current state (where the last phase
        ended; the batch size must not have changed).
    run_program(program, record_grads=False)         begin, then every phase (the GDU series, G and states, on the
                                                     first nudged)
    estimate() -> g_hat (owners' copies); estimate_drift() / replica_drift(): primary vs replica, per tensor
    update(); train_batch(x, y, beta, T1, T2, draw=None) -> prediction; infer(x, steps) -> output; output(name)
    run_batch(x, y, program, draw=None, apply=True) -> (prediction, {phase: residuals}): any program as one batch
    gated_batch(x, y, beta, T1, T2, draw, residual_tol) -> (prediction, dropped samples, fell back to N = 2)
    accumulators() -> {node: {path: tensor}}: each node's accumulators (the protocol's `mem`; the default rule's
                     `acc.<held tensor>`), read for observation as estimate() is for audits
    get_state() -> {node: bytes} / set_state(...); message_logs() -> {"nodes": {...}, "refused", "unknown"}; close()
    lineage() -> {node: [(batch serial, update hash)]}: every update a node applied in a batch given a draw

Both raise the same errors: a PhaseError-derived FabricError from the fabric and a PhaseError from the in-process
engine name node, phase and step (cluster/nodeset.PhaseError is the common base).
"""
from __future__ import annotations

import torch

from nodes.graph import assemble
from protocols import get_protocol
from protocols.base import Phase


class Engine:
    name = ""

    def __init__(self, model, protocol, specs: dict):
        self.model, self.protocol, self.specs = model, get_protocol(protocol), specs

    # subclasses: set_params, set_batch, begin, run_phase, update, output, get_state, set_state, message_logs,
    # accumulators, close, and _held() / _estimates() -> {node: {local: tensor}}

    def get_params(self) -> dict:
        return assemble(self.model, self.specs, self._held())

    def estimate(self) -> dict:
        """g_hat gathered from the owners' local estimates (for audits; training never gathers)."""
        return assemble(self.model, self.specs, self._estimates())

    def replica_drift(self) -> dict:
        """max |primary - replica| per replicated parameter, over the tensors each end holds now."""
        return self._drift(self._held())

    def estimate_drift(self) -> dict:
        """max |primary - replica| per replicated parameter over the updates each end computed itself."""
        return self._drift(self._estimates())

    def _drift(self, held: dict) -> dict:
        replicated = {h.param for s in self.specs.values() for h in s.held.values() if h.role == "replica"}
        if not replicated:
            return {}
        prim, repl = assemble(self.model, self.specs, held, "primary"), assemble(self.model, self.specs, held, "replica")
        return {k: float((prim[k] - repl[k]).abs().max()) for k in sorted(replicated)}

    def run_program(self, program, record_grads: bool = False) -> dict:
        """begin, then every phase of the program; with `record_grads` the GDU phase returns its series: G's
        ("grad_steps") and the states s_0..s_T2 of every dynamic group ("states")."""
        self.begin()
        gdu = self.protocol.gdu_phase(program) if record_grads else None
        return {ph.name: self.run_phase(ph, record_states=ph is gdu, record_grads=ph is gdu) for ph in program}

    def program(self, beta, T1: int, T2: int) -> tuple:
        return self.protocol.program(beta, int(T1), int(T2))

    def _run_batch(self, x, y, program, draw=None, apply: bool = True) -> tuple:
        """set_batch, the program, the update if `apply`: (the output's prediction, {phase: (B,) residuals})."""
        self.set_batch(x, y, draw)
        res = self.run_program(program)
        if apply:
            self.update()
        return self.prediction(program), {k: torch.tensor(v["residuals"], dtype=torch.float64)
                                              for k, v in res.items()}

    def run_batch(self, x, y, program, draw=None, apply: bool = True) -> tuple:
        """set_batch, `program` (any phases: a family's own evaluation pass too), the update if `apply` (the fabric:
        one control call per host): (the output's prediction, {phase: (B,) residuals})."""
        return self._run_batch(x, y, program, draw, apply)

    def train_batch(self, x, y, beta, T1: int, T2: int, draw=None):
        """set_batch, the program, the update; returns the output's prediction (the protocol's: the first phase's
        state, the free one)."""
        return self._run_batch(x, y, self.program(beta, T1, T2), draw)[0]

    def gated_batch(self, x, y, beta, T1: int, T2: int, draw, residual_tol: float) -> tuple:
        """train_batch behind the convergence gate (docs/algorithms.md §7 "Safety"): the program runs without its update;
        if a complex phase diverged in any sample (residual inf), the batch runs again on the protocol's fallback
        program (Protocol.fallback, e.g. holomorphic EP's N = 2); the samples whose residual exceeds residual_tol in any phase are
        dropped, and the update is applied from the kept ones alone, by running them again (the coordinator feeds
        the boundary; nodes never see a mask). Returns (prediction, samples dropped, whether it fell back)."""
        program = self.program(beta, T1, T2)
        out, res = self._run_batch(x, y, program, draw, apply=False)
        fallback = self.protocol.fallback(beta, T1, T2)
        fell = fallback is not None and any(ph.complex and not bool(torch.isfinite(res[ph.name]).all())
                                            for ph in program)
        if fell:
            program = fallback
            _, res = self._run_batch(x, y, program, draw, apply=False)
        keep = torch.stack([r <= residual_tol for r in res.values()]).all(0)
        if bool(keep.all()):
            self.update()
        elif bool(keep.any()):
            self._run_batch(torch.as_tensor(x)[keep], torch.as_tensor(y)[keep], program, draw)
        return out, int((~keep).sum()), fell

    def infer(self, x, steps: int):
        self.set_batch(x)
        self.run_phase(Phase("free", int(steps)))
        return self.output("free")

    def _groups(self, per_node: dict, dim: int) -> list:
        """Per dynamic group, the nodes' tensors side by side in unit order (along `dim`: the units' axis, the last)."""
        out = []
        for g in self.model.dynamic_groups:
            ids = sorted((i for i, s in self.specs.items() if s.block.group == g.name),
                         key=lambda i: self.specs[i].block.lo)
            out.append(torch.cat([per_node[i] for i in ids], dim=dim))
        return out

    def _series(self, per_node: dict) -> dict:
        """The owners' step-wise series, {node: {local: (T, ...)}}, assembled per parameter with the time axis."""
        T = next(iter(next(iter(per_node.values())).values())).shape[0]
        steps = [assemble(self.model, self.specs, {i: {k: v[t].cpu() for k, v in h.items()} for i, h in per_node.items()})
                 for t in range(T)]
        return {k: torch.stack([s[k] for s in steps]) for k in steps[0]} if T else {}

    def _output_of(self, per_node: dict):
        out = self.model.output_group.name
        ids = sorted((i for i in per_node if self.specs[i].block.group == out), key=lambda i: self.specs[i].block.lo)
        return torch.cat([per_node[i] for i in ids], dim=-1)
