"""One logical node's in-ports: the check of every delivered message, the step buffer, and the assembly of a step's
messages into the node's inbox slots (nodes/graph.Slot).

A message is accepted only on a declared in-port (src, kind) of its destination; a duplicate (port, serial, step),
or one older than what the port already delivered, is a MessageError; a port may run at most MAX_AHEAD messages
ahead (a neighbour in lockstep is at most a step or a phase ahead), so a flood is an error, not a growing buffer;
messages of phases older than the current one (an aborted phase's) are dropped. At `take` each message must have
the phase's dtype and the shape (B, width) of its port, B the batch size of the phase: a (1, w) payload where
(B, w) is expected is an error, never broadcast.
"""
from __future__ import annotations

import numpy as np
import torch

from cluster.messages import MessageError, NUMPY_DTYPE, dtype_name, ndarray_from
from nodes.graph import carried
from nodes.rules import Guarded

MAX_AHEAD = 8
_NAMES = {t: dtype_name(torch.empty(0, dtype=t)) for t in (torch.float32, torch.float64, torch.complex64,
                                                           torch.complex128)}


class NodeInbox:
    def __init__(self, spec):
        self.node = spec.id
        self.ports = {(p.src, p.kind): p for p in spec.in_ports}
        self.all_slots = tuple((s.name, s.width, s.parts, s.kind, s.tiled) for s in spec.slots.values())
        self.activate(())
        self.buffer = {}      # (src, kind, serial, step) -> (phase, dtype, shape, ndarray)
        self.count = {}       # (serial, step) -> ports delivered
        self.ahead = dict.fromkeys(self.ports, 0)
        self.last = dict.fromkeys(self.ports, (-1, -1))
        self.serial = -1
        self.stale = 0
        self.bufs = {}
        self.parity = 0

    def activate(self, kinds) -> None:
        """The ports a phase carries: the signal's and those of its extra `kinds` (protocols/base.Phase.kinds)."""
        live = carried(kinds)
        self.order = tuple(k for k in self.ports if k[1] in live)
        self.widths = tuple((k, self.ports[k].width) for k in self.order)
        self.slots = tuple(s for s in self.all_slots if s[3] in live)

    def start(self, serial: int, kinds=()) -> None:
        """A phase with this serial begins, carrying the signal and `kinds`: messages of older serials are stale (an
        aborted phase's) and go."""
        self.serial = serial
        self.activate(kinds)
        for key in [k for k in self.buffer if k[2] == serial and k[:2] not in self.order]:
            self._refuse(key[0], key[1], self.buffer[key][0], key[3])
        for key in [k for k in self.buffer if k[2] < serial]:
            self._pop(key)
            self.stale += 1
        for k in [k for k in self.count if k[0] < serial]:
            del self.count[k]

    def _pop(self, key):
        entry = self.buffer.pop(key)
        self.ahead[key[:2]] -= 1
        return entry

    def has_port(self, src: str, kind: str) -> bool:
        return (src, kind) in self.ports

    def accept(self, src: str, kind: str, phase: str, serial: int, step: int, dtype: str, shape, payload) -> None:
        """Buffer one message on port (src, kind); `payload` is raw bytes (checked against dtype and shape here) or
        an ndarray (a delivery within the host)."""
        if serial < self.serial:
            self.stale += 1
            return
        port = (src, kind)
        if serial == self.serial and port not in self.order:
            self._refuse(src, kind, phase, step)
        key = (src, kind, serial, step)
        if key in self.buffer or (serial, step) <= self.last[port]:
            raise MessageError(f"node {self.node}, phase {phase}, step {step}: duplicate message from {src} "
                               f"(kind {kind}, serial {serial})")
        if self.ahead[port] >= MAX_AHEAD:
            raise MessageError(f"node {self.node}, phase {phase}, step {step}: more than {MAX_AHEAD} messages held "
                               f"from {src} (kind {kind}); a neighbour in lockstep cannot run that far ahead")
        if type(payload) is not np.ndarray:
            try:
                payload = ndarray_from(payload, dtype, shape)
            except MessageError as err:
                raise MessageError(f"node {self.node}, phase {phase}, step {step}, message from {src}: {err}") from None
        self.buffer[key] = (phase, dtype, tuple(shape), payload)
        self.ahead[port] += 1
        self.count[(serial, step)] = self.count.get((serial, step), 0) + 1

    def _refuse(self, src, kind, phase, step):
        raise MessageError(f"node {self.node}, phase {phase}, step {step}: message from {src} of kind {kind}, which "
                           f"this phase does not carry (it carries {sorted({k for _, k in self.order})})")

    def complete(self, serial: int, step: int) -> bool:
        return self.count.get((serial, step), 0) == len(self.order)

    def missing(self, serial: int, step: int) -> list:
        return sorted(src for src, kind in self.order if (src, kind, serial, step) not in self.buffer)

    def take(self, serial: int, step: int, phase: str, batch: int, dtype, own) -> dict:
        """The step's messages copied side by side into this node's own 64-byte-aligned (B, width) slot buffers
        (aligned operands keep BLAS rounding, hence runs, deterministic). Two buffer sets alternate by step, so a
        buffer is never overwritten while the step that reads it runs. `own` is the node's own payloads by kind
        (for a slot of its own group: {"a": its signal, ...})."""
        self.count.pop((serial, step), None)
        want = _NAMES[dtype]
        got, buffer, ahead, last, done = {}, self.buffer, self.ahead, self.last, (serial, step)
        for port, width in self.widths:
            ph, dt, shape, arr = buffer.pop((port[0], port[1], serial, step))
            ahead[port] -= 1
            if dt != want or shape != (batch, width):
                raise MessageError(f"node {self.node}, phase {phase}, step {step}, message from {port[0]}: "
                                   f"{dt}{list(shape)}, expected {want}[{batch}, {width}]")
            last[port] = done
            got[port] = arr
        self.parity ^= 1
        out = {}
        for name, width, parts, kind, tiles in self.slots:
            key = (name, self.parity)
            buf = self.bufs.get(key)
            if buf is None or buf[0].shape[0] != batch or buf[0].dtype != dtype:
                t = torch.zeros(batch, width, dtype=dtype)  # columns no port fills (a mask's gaps) stay zero
                buf = self.bufs[key] = (t, t.numpy())
            view = buf[1]
            pieces = [own[kind].numpy() if src == "self" else got[(src, kind)] for src, _, _ in parts]
            if tiles and len(pieces) > 1:  # the parts tile the slot: one copy for all of them
                np.concatenate(pieces, axis=1, out=view)
            else:
                for (_, lo, hi), piece in zip(parts, pieces):
                    view[:, lo:hi] = piece
            out[name] = buf[0]
        return Guarded(out, f"node {self.node}, phase {phase}, step {step}", "port")


def as_payload(t: torch.Tensor) -> np.ndarray:
    """A delivery within a host: the sender's tensor as an ndarray (the receiver copies it at `take`)."""
    return t.detach().numpy()


__all__ = ["NodeInbox", "MAX_AHEAD", "as_payload", "NUMPY_DTYPE"]
