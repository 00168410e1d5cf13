"""A host's data plane when it runs many logical nodes (`fabric.exchange = frames`): one frame per host pair per
step, deliveries within the host through one step buffer, and each node's inbox gathered from it by its own ports.

With hundreds of nodes per host the cost of a message (header, checks, log entry: ~10-25 us in Python) dwarfs
a neuron's rule (~10 us), so the unit of transfer and of checking is the host pair, as in NEST's spike buffers per
virtual-process pair; the unit of routing, reading and logging stays the logical edge.

Layout, fixed for the run per set of kinds a phase carries (`Layout`): an entry is what one node sends on one
kind, once for every port of a broadcast kind (the signal `a`, its twin `r`: one payload to all neighbours) and
once per out-port of a targeted kind (`t`, `g`: a payload per destination). The step buffer W (rows, columns)
holds the host's own entries and those of each peer host's frame (the entries of its nodes that feed a node here),
all in the natural order of (sender, kind, destination), which both ends derive from their own ports and the node
ids, then one zero column (a masked slot's gaps). A node's slot is filled from the columns of W its in-ports name,
in slot order, into its own double-buffered aligned buffers (a copy of a view where they are side by side, as
the parts of a group's slot are in that order; else one index_select), so a node reads only what is routed to it.

Checks. A node's own outbox (our code) is checked for non-neighbour targets, dtype and shape; a failure is
raised. A frame from the wire is checked once against its connection and its sender's fixed table: the host it
claims must be the connection's authenticated user (`forged`) and one whose nodes feed a node here
(`not_a_port`), the destination this host (`not_here`), then the window, phase, dtype, shape (rows, the table's
width) and bytes, exactly as cluster/runtime/ports.py checks a message; a frame that fails is dropped and counted against
the connection (cluster/runtime/admission.py), never raised. Every column of an accepted frame is then an entry of a
sender that the connection's host runs (placement) and that is an in-port of a node here, of the declared width:
the per-port checks of a message hold for all of them at once. Log: every logical edge gets one delivery per
step whose frame (or whose host's own send) was consumed, added in bulk to its destination's counters when the
log is read (`full` mode: one record per edge per step), which the locality report reads like any other.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from cluster.messages import ITEMSIZE, Dropped, MessageError, dtype_name, encode_header, ndarray_from
from cluster.runtime.ports import COMPLEX, MAX_AHEAD, check_window
from nodes.graph import SIGNAL, carried
from nodes.rules import Guarded, LocalityError

FRAME = "frame"               # the header kind of a frame (no port may have this kind)
BROADCAST = (SIGNAL, "r")     # kinds sent once per sender; the others ("t", "g") once per out-port
LOCAL = ""                    # the segment of W this host's own nodes write


def _natural(name: str) -> tuple:
    """A node id's natural order ("L1.2" before "L1.10"): the same at both ends of a frame, from the ids alone."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _order(entry: tuple) -> tuple:
    """The order of entries in W and in a frame: sender, kind, destination (broadcast first), naturally."""
    return _natural(entry[0]), entry[1], _natural(entry[2])


def _span(idx: np.ndarray):
    """A slice for contiguous column indices (a copy into a view), else the index array itself."""
    if len(idx) and (idx == np.arange(idx[0], idx[0] + len(idx))).all():
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return idx


def entry_of(src: str, kind: str, dst: str) -> tuple:
    """The entry a port (src -> dst, kind) is carried in: (src, kind, "") for a broadcast kind, else per dst."""
    return (src, kind, "" if kind in BROADCAST else dst)


@dataclass
class Layout:
    """Where everything is in W for one set of carried kinds."""
    width: int        # columns of W, the zero column included
    sends: dict       # node -> ((entry, outbox key, first column, width), ...) of its own entries
    targets: dict     # node -> {(dst, kind)}: its targeted out-ports
    peers_out: dict   # peer host -> (column index tensor into W, width): the frame it gets
    peers_in: dict    # peer host -> (columns of W: a slice or an index array, width): where its frame goes
    gathers: dict     # node -> ((slot name, width, columns of W: a slice or an index array,
                      #           ((lo, hi, kind) of its own parts)), ...)
    edges: dict       # segment (LOCAL or a peer host) -> ((src, dst, kind, width), ...): the edges it delivers


class Exchange:
    def __init__(self, host_id: str, specs: dict, placement: dict, logs: dict, drops, run_dtype: str,
                 max_bytes: int):
        """specs: this host's nodes; placement {node: host} of every node; logs {node: MessageLog}; drops: the
        host's Drops (frames are the host's, not one node's)."""
        self.host_id, self.specs, self.placement = host_id, specs, placement
        self.logs, self.drops, self.max_bytes = logs, drops, int(max_bytes)
        self.dtypes = {run_dtype, COMPLEX.get(run_dtype, run_dtype)}
        self.layouts = {}  # carried kinds -> Layout
        self.buffer = {}   # (peer, serial, step) -> (phase, dtype, shape, ndarray)
        self.held = {}     # peer -> frames buffered
        self.last = {}     # peer -> (serial, step) last consumed
        self.serial, self.phase, self.steps, self.want, self.rows = -1, None, -1, None, None
        self.lay = None
        self.W = self.Wn = None
        self.puts, self.inboxes, self.parity = {}, {}, 0
        self.delivered = {}  # segment -> steps delivered in this phase (kept at `finish`)
        self.pending = {}    # (kinds, segment, phase, rows, dtype) -> steps delivered, not yet in the edge counters
        self.live = None
        self.full = any(log.mode == "full" for log in logs.values())  # a record per edge per step too
        self.feeders = frozenset(placement[p.src] for s in specs.values() for p in s.in_ports
                                 if placement[p.src] != host_id)  # the hosts whose nodes send to a node here

    # ---- the layout -----------------------------------------------------------------------------------------
    def layout(self, kinds) -> Layout:
        live = carried(kinds)
        if live not in self.layouts:
            self.layouts[live] = self._layout(live)
        return self.layouts[live]

    def _layout(self, live) -> Layout:
        here, where = self.host_id, self.placement
        own, targets, needed = {}, {}, {}
        for i, s in self.specs.items():
            targets[i] = {(p.dst, p.kind) for p in s.out_ports if p.kind not in BROADCAST}
            for p in s.out_ports:
                if p.kind in live:
                    e = entry_of(i, p.kind, p.dst)
                    if own.setdefault(e, p.width) != p.width:
                        raise ValueError(f"node {i}: its ports of kind {p.kind} differ in width; a broadcast kind "
                                         f"sends one payload to all")
                    if where[p.dst] != here:
                        needed.setdefault(where[p.dst], set()).add(e)
        incoming, edges = {}, {LOCAL: []}
        for j, s in self.specs.items():
            for p in s.in_ports:
                if p.kind in live:
                    seg = LOCAL if where[p.src] == here else where[p.src]
                    edges.setdefault(seg, []).append((p.src, j, p.kind, p.width))
                    if seg != LOCAL:
                        incoming.setdefault(seg, {})[entry_of(p.src, p.kind, j)] = p.width
        width = dict(own)
        for es in incoming.values():
            width.update(es)
        cols, at = {}, 0
        for e in sorted(width, key=_order):  # one order for W: a slot's parts sit side by side, so most are a view
            cols[e], at = at, at + width[e]
        zero = at

        def columns(es):
            return np.concatenate([np.arange(cols[e], cols[e] + width[e]) for e in sorted(es, key=_order)])
        sends = {i: tuple((e, e[1] if e[2] == "" else (e[2], e[1]), cols[e], own[e]) for e in sorted(own)
                          if e[0] == i) for i in self.specs}
        peers_out = {peer: (torch.from_numpy(columns(es)), int(sum(width[e] for e in es)))
                     for peer, es in sorted(needed.items())}
        peers_in = {peer: (_span(columns(es)), int(sum(es.values()))) for peer, es in sorted(incoming.items())}
        gathers = {}
        for j, s in self.specs.items():
            plan = []
            for sl in s.slots.values():
                if sl.kind not in live:
                    continue
                idx, mine = [zero] * sl.width, []
                for src, lo, hi in sl.parts:
                    if src == "self":
                        mine.append((lo, hi, sl.kind))
                    else:
                        c = cols[entry_of(src, sl.kind, j)]
                        idx[lo:hi] = range(c, c + hi - lo)
                cols_of = np.array(idx, dtype=np.int64)
                if not mine:  # a slot with own parts is copied into after its gather
                    cols_of = _span(cols_of)
                plan.append((sl.name, sl.width, cols_of, tuple(mine)))
            gathers[j] = tuple(plan)
        return Layout(zero + 1, sends, targets, peers_out, peers_in, gathers,
                      {k: tuple(v) for k, v in edges.items()})

    # ---- a phase --------------------------------------------------------------------------------------------
    def start(self, serial: int, phase: str, steps: int, kinds, dtype, rows: int) -> None:
        """A phase begins: W for its kinds, dtype (torch) and rows; frames of older serials are stale and go,
        those of this one that came early are checked now against what was not known then."""
        self.serial, self.phase, self.steps, self.rows = serial, phase, steps, rows
        self.want = dtype_name(torch.empty(0, dtype=dtype))
        self.live = carried(kinds)
        lay = self.layout(kinds)
        if self.W is None or self.W.shape != (rows, lay.width) or self.W.dtype != dtype or lay is not self.lay:
            self.lay = lay
            self._bind(torch.zeros(rows, lay.width, dtype=dtype))
        self.delivered = dict.fromkeys(self.lay.edges, 0)
        for key in [k for k in self.buffer if k[1] <= serial]:
            ph, dt, shape, _ = self.buffer[key]
            try:
                if key[1] < serial:
                    raise Dropped("stale", self._where(key[0], ph, key[2]) + f"of serial {key[1]} (stale)")
                self._current(key[0], ph, key[2], dt, shape)
            except Dropped as err:
                del self.buffer[key]
                self.held[key[0]] -= 1
                self.drops.dropped(key[0], err)

    def _bind(self, W) -> None:
        """W and everything that points into it: each node's entries (numpy views it writes), each peer's frame
        columns, and per node and parity its inbox (a Guarded over its own slot buffers) and how to fill each
        slot: a copy from a view of W where its columns are contiguous, else an index_select."""
        self.W, self.Wn = W, W.numpy()
        Wn, rows, lay = self.Wn, W.shape[0], self.lay
        self.puts = {i: tuple((key, entry, Wn[:, lo:lo + width], (rows, width)) for entry, key, lo, width in es)
                     for i, es in lay.sends.items()}
        self.inboxes = {}
        for j, plan in lay.gathers.items():
            for parity in (0, 1):
                slots, fills = {}, []
                for name, width, cols, mine in plan:
                    buf = slots[name] = torch.zeros(rows, width, dtype=W.dtype)  # aligned: deterministic BLAS
                    if isinstance(cols, slice):
                        fills.append((buf.numpy(), Wn[:, cols], None, mine))
                    else:
                        fills.append((buf, None, torch.from_numpy(cols), mine))
                self.inboxes[(j, parity)] = (Guarded(slots, "", "port"), tuple(fills))
        self.parity = 0

    def put(self, i: str, outbox: dict, t: int) -> None:
        """Node i's outbox into its entries of W: {kind: tensor} for every port of that kind, {(dst, kind): tensor}
        for one. A target that is not an out-port is a LocalityError; a wrong dtype or shape is raised."""
        for key in outbox:
            if type(key) is tuple and key not in self.lay.targets[i]:
                raise LocalityError(f"node {i}, phase {self.phase}, step {t}: sends to {key[0]}, which is not a "
                                    f"graph neighbour (no out-port {key[0]}/{key[1]})")
        dtype = self.W.dtype
        for key, entry, view, shape in self.puts[i]:
            payload = outbox.get(key)
            if payload is None and type(key) is tuple:
                payload = outbox.get(key[1])
            if payload is None:
                raise LocalityError(f"node {i}, phase {self.phase}, step {t}: nothing to send on kind {entry[1]}"
                                    + (f" to {entry[2]}" if entry[2] else " (a broadcast kind: one payload for "
                                                                         "every out-port)"))
            if payload.dtype != dtype or payload.shape != shape:
                raise Dropped("dtype" if payload.dtype != dtype else "shape", f"node {i}, phase {self.phase}, step "
                              f"{t}: sends {dtype_name(payload)}{list(payload.shape)} on kind {entry[1]}, expected "
                              f"{self.want}{list(shape)}")
            np.copyto(view, payload.numpy())

    def frames(self, t: int):
        """(peer, header, payload) of this step's frame to each peer host: its entries' columns of W."""
        for peer, (idx, width) in self.lay.peers_out.items():
            header = encode_header(self.host_id, peer, FRAME, self.phase, self.serial, t, self.want,
                                   [self.rows, width])
            yield peer, header, memoryview(torch.index_select(self.W, 1, idx).numpy()).cast("B")

    def ready(self, t: int) -> bool:
        buf, serial = self.buffer, self.serial
        return all((peer, serial, t) in buf for peer in self.lay.peers_in)

    def missing(self, t: int) -> list:
        return sorted(p for p in self.lay.peers_in if (p, self.serial, t) not in self.buffer)

    def receive(self, t: int) -> None:
        """Step t's frames into W (each was checked when it arrived or when its phase started); the inboxes of
        this step use the other buffer set than the last step's (a rule may still hold the last one)."""
        for peer, (where, _) in self.lay.peers_in.items():
            self.Wn[:, where] = self.buffer.pop((peer, self.serial, t))[3]
            self.held[peer] -= 1
            self.last[peer] = (self.serial, t)
        self.parity ^= 1
        for seg in self.delivered:
            self.delivered[seg] += 1
        if self.full:
            for edges in self.lay.edges.values():
                for src, dst, kind, width in edges:
                    self.logs[dst].records.append((src, dst, kind, self.phase, t,
                                                   self.rows * width * ITEMSIZE[self.want]))

    def inbox(self, j: str, t: int, own: dict) -> Guarded:
        """Node j's step-t inbox: each slot filled from the columns of W its ports name (its own parts from `own`,
        its payloads by kind)."""
        inbox, fills = self.inboxes[(j, self.parity)]
        W = self.W
        for buf, view, idx, mine in fills:
            if view is not None:
                np.copyto(buf, view)
            else:
                torch.index_select(W, 1, idx, out=buf)
                for lo, hi, kind in mine:  # its own signal (a slot of its own group)
                    buf[:, lo:hi] = own[kind]
        inbox.where = (j, self.phase, t)
        return inbox

    def finish(self) -> None:
        """The phase's deliveries, per segment: kept as counts until `flush` (the log is read between runs, not
        between phases, so the per-edge bookkeeping is done once per export, not once per phase)."""
        for seg, n in self.delivered.items():
            if n:
                key = (self.live, seg, self.phase, self.rows, self.want)
                self.pending[key] = self.pending.get(key, 0) + n
        self.delivered = dict.fromkeys(self.delivered, 0)

    def flush(self) -> None:
        """Every pending delivery into its edge's counters: one per step delivered, bytes per message."""
        for (live, seg, phase, rows, dtype), n in self.pending.items():
            for src, dst, kind, width in self.layouts[live].edges[seg]:
                self.logs[dst].count(src, dst, kind, phase, n, n * rows * width * ITEMSIZE[dtype])
        self.pending.clear()

    # ---- frames from the wire -------------------------------------------------------------------------------
    def _where(self, peer, phase, step) -> str:
        return f"host {self.host_id}, phase {phase}, step {step}, frame from {peer}: "

    def _current(self, peer, phase, step, dtype, shape) -> None:
        """The checks of a frame of the running phase (Dropped if one fails)."""
        if phase != self.phase:
            raise Dropped("phase", self._where(peer, phase, step) + f"phase {phase!r} for serial {self.serial}, "
                                                                     f"which runs {self.phase!r}")
        if step > self.steps:
            raise Dropped("future", self._where(peer, phase, step) + f"beyond the phase's last step {self.steps}")
        width = self.lay.peers_in.get(peer, (0, 0))[1]
        if dtype != self.want or shape[0] != self.rows or shape[1] != width:
            raise Dropped("dtype" if dtype != self.want else "shape", self._where(peer, phase, step)
                          + f"{dtype}{list(shape)}, expected {self.want}[{self.rows}, {width}]")

    def arrive(self, user: str, src: str, dst: str, phase: str, serial: int, step: int, dtype: str, shape,
               payload) -> None:
        """Check one frame against its connection (`user`) and its sender's table, then buffer it; one that fails
        is dropped and counted against `user`."""
        try:
            self._arrive(user, src, dst, phase, serial, step, dtype, shape, payload)
        except Dropped as err:
            self.drops.dropped(user, err)

    def _arrive(self, user, src, dst, phase, serial, step, dtype, shape, payload) -> None:
        where = lambda: self._where(f"{src} on {user}'s connection", phase, step)  # noqa: E731 (only for a drop)
        if src != user:
            raise Dropped("forged", where() + f"claims host {src}, but the connection is {user}'s (forged sender)")
        if dst != self.host_id:
            raise Dropped("not_here", where() + f"for host {dst!r}, not this one")
        if src not in self.feeders:
            raise Dropped("not_a_port", where() + f"no node of {src} is a graph neighbour of a node here")
        if payload is None:
            raise Dropped("frames", where() + "not two frames")
        check_window(where, serial, step, dtype, self.last.get(src, (-1, -1)), self.serial, self.dtypes, self.want)
        if len(shape) != 2 or shape[0] < 1:
            raise Dropped("shape", where() + f"{dtype}{list(shape)}, expected [rows, width]")
        if serial == self.serial:
            self._current(src, phase, step, dtype, shape)
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        if nbytes > self.max_bytes:
            raise Dropped("size", where() + f"{nbytes} bytes, more than {self.max_bytes}")
        key = (src, serial, step)
        if key in self.buffer:
            raise Dropped("duplicate", where() + f"serial {serial}, step {step} is already buffered")
        if self.held.get(src, 0) >= MAX_AHEAD:
            raise Dropped("full", where() + f"more than {MAX_AHEAD} frames held from {src}")
        try:
            arr = ndarray_from(payload, dtype, shape)
        except MessageError as err:
            raise Dropped("size", where() + str(err)) from None
        self.buffer[key] = (phase, dtype, tuple(shape), arr)
        self.held[src] = self.held.get(src, 0) + 1
