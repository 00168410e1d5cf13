"""A fabric node: a block of units, the synapses it holds, and its local rules for every phase.

`NodeSpec` is plain data (the interface: its block, its neighbours and their widths, what it holds);
`NodeActor` is a plain class running the behaviour on it. `cluster/fabric.py` wraps it in a Ray actor at
build time; a test can run it in-process. A node reads only: its own state, the tensors it holds, its
neighbours' messages, and the boundary signals (x at layer 1, y and beta at the output, batch size, phase).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from cluster.channel import NodeChannel, PhaseError
from cluster.message_log import MessageLog
from cluster.messages import pack_arrays, torch_dtype, unpack_arrays
from cluster.transport import make_transport
from nodes.dynamics import (check_due, const_drive, divergence, estimate, field, local_grads, preactivation,
                            signal, step)
from nodes.model import COORDINATOR, Block, LayeredModel
from nodes.optim import Optimizer
from protocols import get_protocol


@dataclass(frozen=True)
class NodeSpec:
    model: LayeredModel
    block: Block
    pre: tuple            # ((node id, width), ...) of layer n-1, in unit order
    post: tuple           # the same for layer n+1
    protocol: str
    dtype: str
    lrs: dict             # held tensor -> learning rate
    optimizer: str = "sgd"
    momentum: float = 0.0
    transport: str = "zmq"
    host: str = "127.0.0.1"
    wire: str = "auto"
    log_mode: str = "counters"
    timeout_s: float = 60.0
    diverge_limit: float = 1e6


def _columns(side: tuple) -> list:
    """[(neighbour id, lo, hi)]: where each neighbour's units sit in the assembled (B, width) input."""
    out, lo = [], 0
    for node_id, width in side:
        out.append((node_id, lo, lo + width))
        lo += width
    return out


class NodeActor:
    def __init__(self, spec: NodeSpec, threads: int = 1):
        torch.set_num_threads(threads)
        self.spec = spec
        m, b = spec.model, spec.block
        self.id = b.node_id
        self.kind, self.act, self.dt = m.kind, m.activation, m.dt
        self.k, self.c = preactivation(m.kind, m.activation)
        self.is_input, self.is_output = b.layer == 1, b.layer == m.N
        self.tdtype = torch_dtype(spec.dtype)
        self.log = MessageLog(spec.log_mode)
        self.transport = make_transport(spec.transport, spec.host, spec.wire)
        widths = dict(spec.pre + spec.post)
        self.chan = NodeChannel(self.id, self.transport, widths, spec.dtype, self.log, spec.timeout_s)
        self.pre_cols, self.post_cols = _columns(spec.pre), _columns(spec.post)
        self.bufs, self.parity = {}, 0
        self.targets = list(widths)
        self.sources = list(widths)
        shapes = m.param_shapes()
        self.params = {}
        for local, (name, rows, cols, _) in m.held(b).items():
            full = torch.zeros(shapes[name], dtype=self.tdtype)
            self.params[local] = (full[rows] if cols is None else full[rows, cols]).clone().contiguous()
        self.opt = Optimizer(spec.optimizer, spec.momentum)
        self.saved = {}
        self.B = 0
        self.x = self.y = self.const = None
        self.busy = threading.RLock()  # one phase at a time: a new call waits until an aborted one has stopped

    # ---- control plane ---------------------------------------------------------------------------
    def endpoint(self):
        return self.transport.address

    def connect(self, peers: dict) -> None:
        self.chan.connect(peers)

    def inject_link(self, peer: str, address=None, receive: bool = False) -> None:
        """Fault injection for the locality audit: an unchecked extra link to a non-neighbour."""
        if receive:
            self.sources.append(peer)
            self.chan.extra.add(peer)
        else:
            self.chan.connect({peer: address}, unchecked=(peer,))
            self.targets.append(peer)

    def set_params(self, packed: bytes) -> None:
        for k, v in unpack_arrays(packed).items():
            self.params[k] = v.to(self.tdtype).contiguous()
        self.const = None

    def get_params(self) -> bytes:
        return pack_arrays(self.params)

    def set_boundary(self, batch: int, packed: bytes = b"") -> None:
        """Boundary signals: the batch size to all; x to the input layer's nodes, y to the output's."""
        self.B = int(batch)
        self.log.record(COORDINATOR, self.id, "control", "batch", -1, 8)
        for k, v in (unpack_arrays(packed) if packed else {}).items():
            self.log.record(COORDINATOR, self.id, "boundary", k, -1, v.numel() * v.element_size())
            setattr(self, k, v.to(self.tdtype))
        self.const = None

    def deliver(self, header: bytes, payload: bytes) -> None:
        self.transport.deliver(header, payload)

    def abort(self, upto: int) -> None:
        """Stop every phase with serial <= upto (the coordinator's call, where the actor runs calls side by side;
        a ZeroMQ node gets the same as a message on its socket)."""
        self.chan.abort(upto)

    def message_log(self, clear: bool = False) -> dict:
        out = self.log.export()
        if clear:
            self.log.clear()
        return out

    def get_state(self) -> bytes:
        return pack_arrays({**{f"param/{k}": v for k, v in self.params.items()},
                            **{f"opt/{k}": v for k, v in self.opt.get_state().items()}})

    def set_state(self, packed: bytes) -> None:
        flat = unpack_arrays(packed)
        self.set_params(pack_arrays({k[6:]: v for k, v in flat.items() if k.startswith("param/")}))
        self.opt.set_state({k[4:]: v for k, v in flat.items() if k.startswith("opt/")})

    def close(self) -> None:
        self.chan.close()

    # ---- one phase: the local relaxation rule ----------------------------------------------------
    def _assemble(self, inbox: dict):
        """(a_pre, a_post): the neighbours' messages copied side by side into this node's own 64-byte-aligned
        (B, width) buffers (aligned operands keep BLAS rounding, hence runs, deterministic). Two buffer sets
        alternate by exchange, so a buffer is never overwritten while the step that reads it runs."""
        self.parity ^= 1
        return self._fill(0, self.pre_cols, inbox), self._fill(1, self.post_cols, inbox)

    def _fill(self, side: int, cols: list, inbox: dict):
        if not cols:
            return None
        key = (side, self.parity)
        buf = self.bufs.get(key)
        if buf is None or buf[0].shape[0] != self.B:
            t = torch.empty(self.B, cols[-1][2], dtype=self.tdtype)
            buf = self.bufs[key] = (t, t.numpy())
        view = buf[1]
        for src, lo, hi in cols:
            view[:, lo:hi] = inbox[src]
        return buf[0]

    def _exchange(self, name: str, serial: int, t: int, a):
        self.chan.broadcast(name, serial, t, a, self.targets)
        return self._assemble(self.chan.gather(name, serial, t, self.sources))

    def run_phase(self, serial: int, name: str, steps: int, beta: float, start: str,
                  record_states: bool = False, record_grads: bool = False) -> dict:
        """`steps` synchronous steps: send a(s_t), receive the neighbours' a_t, compute s_{t+1}
        (nodes/dynamics.step); then one more exchange so the saved state has its neighbours' a_T.
        Phases run one at a time (with the Ray transport the actor is threaded so that `deliver` and `abort` run
        beside them)."""
        with self.busy:
            return self._relax(serial, name, steps, beta, start, record_states, record_grads)

    @torch.no_grad()
    def _relax(self, serial, name, steps, beta, start, record_states, record_grads) -> dict:
        self.log.record(COORDINATOR, self.id, "control", name, -1, 0)
        if self.is_output and beta != 0:
            self.log.record(COORDINATOR, self.id, "boundary", "beta", -1, 8)
        p = self.params
        if self.const is None:
            self.const = const_drive(p["b_in"], p["W_in"], self.x if self.is_input else None, self.k, self.c)
        y = self.y if self.is_output else None
        s = (torch.zeros(self.B, self.spec.block.width, dtype=self.tdtype) if start == "zero"
             else self.saved[start][0].clone())
        a = signal(self.kind, self.act, s)
        states, grads = [s] if record_states else None, [] if record_grads else None
        const, W_in, W_out, k = self.const, p["W_in"], p.get("W_out"), self.k
        s_prev = s
        for t in range(steps):
            a_pre, a_post = self._exchange(name, serial, t, a)
            if record_grads:
                grads.append(local_grads(self.x if self.is_input else a_pre, a, a_post))
            s_prev, s = s, step(self.kind, self.act, self.dt, s, field(const, W_in, a_pre, W_out, a_post, k), beta, y)
            if check_due(t + 1, steps):
                bad = divergence(s, self.spec.diverge_limit)
                if bad:
                    raise PhaseError(f"node {self.id}, phase {name}, step {t + 1}: state {bad}")
            a = signal(self.kind, self.act, s)
            if record_states:
                states.append(s)
        a_pre, a_post = self._exchange(name, serial, steps, a)
        self.saved[name] = (s, self.x if self.is_input else a_pre.clone(), a,
                            None if a_post is None else a_post.clone())
        out = {"residual": float((s - s_prev).abs().max()) if steps and s.numel() else 0.0}
        if record_states:
            out["states"] = pack_arrays({"s": torch.stack(states)})
        if record_grads:
            grads.append(local_grads(self.x if self.is_input else a_pre, a, a_post))
            out["grad_steps"] = pack_arrays({k: (torch.stack([g[k] for g in grads[1:]])
                                                 - torch.stack([g[k] for g in grads[:-1]])) / beta
                                             for k in grads[0]})
        return out

    def run_batch(self, serial: int, batch: int, packed: bytes, beta: float, T1: int, T2: int,
                  apply: bool = True):
        """A whole training batch from one control call: the boundary, the protocol's phases (serials
        serial, serial + 1, ...) and the local update. Output nodes return their free state (the prediction)."""
        with self.busy:
            self.set_boundary(batch, packed)
            proto = get_protocol(self.spec.protocol)
            for i, ph in enumerate(proto.phases):
                self.run_phase(serial + i, ph.name, proto.steps_of(ph, T1, T2), ph.beta_sign * beta, ph.start)
            self.update(beta, apply)
            return self.output("free") if self.is_output else None

    def infer(self, serial: int, batch: int, packed: bytes, steps: int):
        """The boundary and a free phase from one control call; output nodes return their state."""
        with self.busy:
            self.set_boundary(batch, packed)
            self.run_phase(serial, "free", steps, 0.0, "zero")
            return self.output("free") if self.is_output else None

    def output(self, name: str = "free") -> bytes:
        """Readout of a saved state (the coordinator reads the output layer's prediction)."""
        return pack_arrays({"s": self.saved[name][0]})

    # ---- the local learning rule -------------------------------------------------------------------
    @torch.no_grad()
    def update(self, beta: float, apply: bool = True, gather: bool = False):
        """g_hat = sum_k c_k(beta) G(s_k) on the held tensors (protocols/), then the optimiser step."""
        coefs = get_protocol(self.spec.protocol).coefficients(beta)
        g = estimate(coefs, {k: self.saved[k][1:] for k in coefs})
        if apply:
            self.opt.step(self.params, g, self.spec.lrs)
            self.const = None
        return pack_arrays(g) if gather else None
