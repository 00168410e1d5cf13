"""One logical node's in-ports: the check of every delivered message, the step buffer, and the assembly of a step's
messages into the node's inbox slots (nodes/graph.Slot).

`accept` checks a message against its destination before it is buffered: a declared in-port (src, kind); not a
(serial, step) the port already delivered (`replayed`) nor one already buffered (`duplicate`); not an older phase's
(`stale`, an aborted phase's: normal); within the window a neighbour in lockstep can reach (serial at most one
ahead, step at most MAX_AHEAD past the port's last delivered one and within the phase: else `future`); at most
MAX_AHEAD messages held per port (`full`); and the phase's dtype and the shape (rows, width) of its port, its
bytes matching both (at most `max_bytes`). For the current phase everything is checked at once; for the next one
(a neighbour a phase ahead) what is known (width, a dtype of the run, bytes) at once and the rest (phase name,
kind carried, dtype, rows) when it starts. A (1, w) payload where (B, w) is expected is refused, never broadcast.
A failed check is a `Dropped` naming the reason: a message from the wire (`user`, the connection, given) is then
dropped and counted in the node's MessageLog; one from a node on the same host (our own code) is raised.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from cluster.messages import ITEMSIZE, NUMPY_DTYPE, Dropped, MessageError, dtype_name, ndarray_from
from nodes.graph import carried
from nodes.rules import Guarded

MAX_AHEAD = 8
MAX_BYTES = 1 << 28  # the largest payload a message may carry (overridable per fabric: `max_message_bytes`)
COMPLEX = {"float32": "complex64", "float64": "complex128"}
_NAMES = {t: dtype_name(torch.empty(0, dtype=t)) for t in (torch.float32, torch.float64, torch.complex64,
                                                           torch.complex128)}


def check_window(where, serial: int, step: int, dtype: str, last: tuple, running: int, dtypes, want) -> None:
    """What a message and a frame are checked for alike (Dropped if one fails, `where()` its text): a step >= 0; not
    a (serial, step) its port (or peer) has delivered (`last`: `replayed`); not an older phase's than the one
    `running` (`stale`); within the window a neighbour in lockstep can reach (`future`); the running phase's dtype
    `want`, or for the next phase one of the run's `dtypes`."""
    if step < 0:
        raise Dropped("malformed", where() + "a negative step")
    if (serial, step) <= last:
        raise Dropped("replayed", where() + f"serial {serial}, step {step} again (delivered up to serial {last[0]}, "
                                          f"step {last[1]})")
    if serial < running:
        raise Dropped("stale", where() + f"of serial {serial}, older than the phase running ({running})")
    base = last[1] if last[0] == serial else -1
    if serial > running + 1 or step > base + MAX_AHEAD:
        raise Dropped("future", where() + f"serial {serial}, step {step}: beyond the window (serial {running} + 1, "
                                        f"step {base} + {MAX_AHEAD})")
    allowed = dtypes if serial > running else {want}
    if dtype not in allowed:
        raise Dropped("dtype", where() + f"dtype {dtype!r}, expected one of {sorted(map(str, allowed))}")


class NodeInbox:
    def __init__(self, spec, log, dtype: str = "float64", max_bytes: int = MAX_BYTES):
        """log: the node's MessageLog (accepted messages recorded, drops counted); dtype: the run's (a complex
        phase carries its complex counterpart)."""
        self.node, self.log, self.max_bytes = spec.id, log, int(max_bytes)
        self.ports = {(p.src, p.kind): p for p in spec.in_ports}
        self.all_slots = tuple((s.name, s.width, s.parts, s.kind, s.tiled) for s in spec.slots.values())
        self.activate(())
        self.buffer = {}      # (src, kind, serial, step) -> (phase, dtype, shape, ndarray, user)
        self.count = {}       # (serial, step) -> ports delivered
        self.ahead = dict.fromkeys(self.ports, 0)
        self.last = dict.fromkeys(self.ports, (-1, -1))
        self.dtypes = {dtype, COMPLEX.get(dtype, dtype)}
        self.serial, self.phase, self.steps, self.want, self.rows = 0, None, -1, None, None
        self.bufs = {}
        self.parity = 0

    def activate(self, kinds) -> None:
        """The ports a phase carries: the signal's and those of its extra `kinds` (protocols/base.Phase.kinds)."""
        live = carried(kinds)
        self.order = tuple(k for k in self.ports if k[1] in live)
        self.slots = tuple(s for s in self.all_slots if s[3] in live)

    def start(self, serial: int, phase: str = "", steps: int = 1 << 62, kinds=(), dtype: str | None = None,
              rows: int | None = None) -> None:
        """A phase with this serial begins: `steps` steps carrying the signal and `kinds`, messages of `dtype` and
        `rows` rows. Messages of older serials are stale (an aborted phase's) and go; those of this one that
        arrived early are checked now against what was not known then."""
        self.serial, self.phase, self.steps, self.want, self.rows = serial, phase, steps, dtype, rows
        self.activate(kinds)
        for key in [k for k in self.buffer if k[2] <= serial]:
            ph, dt, shape, arr, user = self.buffer[key]
            try:
                if key[2] < serial:
                    raise Dropped("stale", self._where(ph, key[3], key[0], user) + f"of serial {key[2]} (stale)")
                self._current(key[0], key[1], ph, key[3], dt, shape, user)
                self.log.record(key[0], self.node, key[1], ph, key[3], arr.nbytes)
            except Dropped as err:
                self._pop(key)
                if user is None and err.reason != "stale":  # honest local code sent it: a bug, not traffic
                    raise
                self.log.drops.dropped(user or key[0], err)
        for k in [k for k in self.count if k[0] < serial]:
            del self.count[k]

    def _pop(self, key):
        entry = self.buffer.pop(key)
        self.ahead[key[:2]] -= 1
        self.count[key[2:]] -= 1
        return entry

    def _where(self, phase, step, src, user) -> str:
        who = f"from {src}" if user is None else f"on {user}'s connection (claiming {src})"
        return f"node {self.node}, phase {phase}, step {step}, message {who}: "

    def _current(self, src, kind, phase, step, dtype, shape, user) -> None:
        """The checks of a message of the current phase that need the phase (Dropped if one fails)."""
        if phase != self.phase:
            raise Dropped("phase", self._where(phase, step, src, user)
                          + f"phase {phase!r} for serial {self.serial}, which runs {self.phase!r}")
        if (src, kind) not in self.order:
            raise Dropped("kind", self._where(phase, step, src, user) + f"kind {kind}, which this phase does not "
                                  f"carry (it carries {sorted({k for _, k in self.order})})")
        if step > self.steps:
            raise Dropped("future", self._where(phase, step, src, user) + f"beyond the phase's last step {self.steps}")
        if dtype != self.want or shape[0] != self.rows:
            raise Dropped("dtype" if dtype != self.want else "shape", self._where(phase, step, src, user)
                          + f"{dtype}{list(shape)}, expected {self.want}[{self.rows}, {shape[1]}]")

    def accept(self, src: str, kind: str, phase: str, serial: int, step: int, dtype: str, shape, payload,
               user: str | None = None) -> bool:
        """Buffer one message on port (src, kind); `payload` is raw bytes (checked against dtype and shape here) or
        an ndarray (a delivery within the host, `user` None). A message that fails a check is Dropped: raised for
        a delivery within the host, counted against `user` for one from the wire (False returned)."""
        try:
            self._accept(src, kind, phase, serial, step, dtype, shape, payload, user)
            return True
        except Dropped as err:
            if user is None:
                raise
            self.log.drops.dropped(user, err)
            return False

    def _accept(self, src, kind, phase, serial, step, dtype, shape, payload, user) -> None:
        port = (src, kind)
        where = lambda: self._where(phase, step, src, user)  # noqa: E731 (the text only for a drop)
        if port not in self.ports:
            raise Dropped("not_a_port", where() + f"no in-port {src}/{kind}: {src} is not a graph neighbour sending "
                                                f"{kind}")
        check_window(where, serial, step, dtype, self.last[port], self.serial, self.dtypes, self.want)
        if len(shape) != 2 or shape[1] != self.ports[port].width or shape[0] < 1:
            raise Dropped("shape", where() + f"{dtype}{list(shape)}, expected [rows, {self.ports[port].width}]")
        if serial == self.serial:
            self._current(src, kind, phase, step, dtype, shape, user)
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if nbytes > self.max_bytes:
            raise Dropped("size", where() + f"{nbytes} bytes, more than {self.max_bytes}")
        key = (src, kind, serial, step)
        if key in self.buffer:
            raise Dropped("duplicate", where() + f"serial {serial}, step {step} is already buffered")
        if self.ahead[port] >= MAX_AHEAD:
            raise Dropped("full", where() + f"more than {MAX_AHEAD} messages held from {src} (kind {kind}); a "
                                          f"neighbour in lockstep cannot run that far ahead")
        if type(payload) is not np.ndarray:
            try:
                payload = ndarray_from(payload, dtype, shape)
            except MessageError as err:
                raise Dropped("size", where() + str(err)) from None
        self.buffer[key] = (phase, dtype, tuple(shape), payload, user)
        self.ahead[port] += 1
        self.count[(serial, step)] = self.count.get((serial, step), 0) + 1
        if serial == self.serial:
            self.log.record(src, self.node, kind, phase, step, nbytes)

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
        got, buffer, ahead, last, done = {}, self.buffer, self.ahead, self.last, (serial, step)
        for port in self.order:  # each passed the phase's dtype and shape checks when it was accepted (or at start)
            arr = buffer.pop((port[0], port[1], serial, step))[3]
            ahead[port] -= 1
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


__all__ = ["NodeInbox", "MAX_AHEAD", "MAX_BYTES", "as_payload", "NUMPY_DTYPE"]
