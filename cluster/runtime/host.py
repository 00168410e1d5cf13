"""A host: the logical nodes placed on one process (a Ray actor, or a thread in tests) and their data plane.

`Host` is a plain class (cluster/runtime/fabric.py wraps it in a Ray actor at build time). In a phase it runs every local
node in lockstep: at step t each node's outbox is sent on its out-ports (to a node on the same host through that
node's in-ports, checks and log, exactly as if it had crossed the wire; to another host over the transport), then
each node waits for its own in-ports' messages tagged t and its rule computes step t+1 (nodes/rules.py). A node's
rule is called with its own inbox only. That is `fabric.exchange = messages` (one message per port per step, the
default with a host per node); with `frames` (the default on `fabric.hosts` >= 1) the host's nodes write their
outboxes into one step buffer, one frame per peer host carries what its nodes need, and each node's inbox is
gathered from that buffer by its own in-ports (cluster/runtime/exchange.py): the same routing, checks and per-edge log.

What arrives on the wire is checked before it touches a node, and whatever fails a check is dropped and counted
against the connection it came on (cluster/runtime/admission.py), never raised: one bad packet does not end a run, and the
step goes on when the legitimate message arrives. The connection's authenticated user (a host, or the coordinator)
must be the host that runs the node the header claims as sender, the destination must be on this host, only the
coordinator may abort, and the destination's in-ports check the rest (cluster/runtime/ports.py). A delivery between nodes
of this host is our own code: a failed check there is raised. Everything the coordinator sends is logged at every
node that receives it, by kind (control, boundary, global), from the call's own structure.
"""
from __future__ import annotations

import gc
import threading
import time

import torch
import zmq

from cluster.runtime.admission import Drops
from cluster.runtime.exchange import FRAME, Exchange
from cluster.runtime.message_log import COORDINATOR, MessageLog
from cluster.messages import (Dropped, array_bytes, decode_header, dtype_name, encode_control, header_prefix,
                              header_suffix, pack_arrays, unpack_arrays)
from cluster.nodeset import Aborted, NodeSet, PhaseError, per_sample_max, recorded
from cluster.runtime.ports import _NAMES, MAX_AHEAD, NodeInbox, as_payload
from cluster.runtime.settings import FabricSettings
from cluster.runtime.transport import TransportError, make_transport, present, split_endpoint
from nodes.graph import carried
from nodes.rules import LocalityError, step_series
from protocols.base import rows

HEARTBEAT_S = 1.0  # a host in a phase tells the coordinator it is alive at most this often


class Heartbeat:
    """A PUSH socket to the coordinator's progress endpoint, authenticated like any data-plane connection."""

    def __init__(self, me: str, endpoint, token: str, ctx=None):
        self.own = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 4)
        address, server_key = split_endpoint(endpoint)
        present(self.sock, me, token, server_key)
        self.sock.connect(address)
        self.me, self.last = me, 0.0

    def beat(self, serial: int, step: int) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            self.last = now
            try:
                self.sock.send_multipart([encode_control(self.me, "progress", serial, step), b""], zmq.NOBLOCK)
            except zmq.Again:
                pass

    def close(self) -> None:
        self.sock.close(0)
        if self.own:
            self.ctx.term()


class Host(NodeSet):
    POLL_S = 0.05

    def __init__(self, host_id: str, specs: dict, protocol, settings, threads: int | None = 1):
        """specs: the logical nodes placed here; settings: the fabric's FabricSettings (cluster/runtime/settings.py;
        a mapping of its fields is converted)."""
        settings = FabricSettings.of(settings)
        if threads:
            torch.set_num_threads(threads)
        from cluster.messages import torch_dtype
        super().__init__(specs, protocol, torch_dtype(settings.dtype), settings.lrs, settings.optimizer,
                         settings.momentum, settings.diverge_limit, forget_free=settings.forget_free,
                         noise=settings.noise, seed=settings.seed, gate=settings.residual_tol is not None)
        self.host_id = host_id
        self.timeout_s = float(settings.timeout_s)
        self.logs = {i: MessageLog(settings.log) for i in self.ids}
        max_bytes = int(settings.max_message_bytes)
        self.inboxes = {i: NodeInbox(s, self.logs[i], settings.dtype, max_bytes) for i, s in self.specs.items()}
        self.prefixes = {(p.src, p.dst, p.kind): header_prefix(p.src, p.dst, p.kind)
                         for s in self.specs.values() for p in s.out_ports}
        ports = sum(len(s.in_ports) + len(s.out_ports) for s in self.specs.values())
        self.transport = make_transport(settings.transport, host_id, settings.host, settings.wire,
                                        float(settings.timeout_s),
                                        hwm=(MAX_AHEAD + 2) * ports + 64, max_bytes=max_bytes,
                                        ports=settings.ports, curve=settings.curve)
        self.placement = {i: host_id for i in self.ids}
        # frames (one per host pair per step): the Exchange's dtype and bound, built at `connect`, once the
        # placement of every node is known
        self.frames = (settings.dtype, max_bytes) if settings.exchange == "frames" else None
        self.exchange = None
        self.aborted_upto = -1
        self.beat = None
        self.unknown = Drops()  # messages that could not be attributed to a local node
        self.busy = threading.RLock()  # one phase at a time: a new call waits until an aborted one has stopped
        for i in self.ids:  # the protocol and its settings reach every node when the host is built
            self._from_coordinator(i, "global", "protocol", 0)
            for k in protocol.settings:
                self._from_coordinator(i, "global", k, 8)

    def _from_coordinator(self, i: str, kind: str, name: str, nbytes: int) -> None:
        self.logs[i].record(COORDINATOR, i, kind, name, -1, nbytes)

    def _control(self, name: str) -> None:
        for i in self.ids:
            self._from_coordinator(i, "control", name, 0)

    # ---- control plane -------------------------------------------------------------------------------------
    def endpoint(self):
        return self.transport.endpoint

    def admit(self, admitted: dict) -> None:
        """admitted {user: token}: who may send here (before anyone connects, so no handshake finds it missing)."""
        self._control("admit")
        self.transport.admit(admitted)

    def connect(self, peers: dict, placement: dict, beat=None) -> None:
        """peers {host: (address or handle, token)}: where to send; placement {node: host} of every node (so the
        sender a message claims can be checked against the connection); beat (address, token) of the coordinator's
        heartbeat endpoint."""
        self._control("connect")
        for peer, (address, token) in peers.items():
            self.transport.connect(peer, address, token)
        self.placement.update(placement)
        if self.frames:
            self.exchange = Exchange(self.host_id, self.specs, self.placement, self.logs, self.unknown, *self.frames)
        if beat is not None:
            self.beat = Heartbeat(self.host_id, beat[0], beat[1], getattr(self.transport, "ctx", None))
        if self.transport.kind != "local":  # an actor process, built: what exists now lives as long as it does, so
            gc.freeze()                     # the collector stops rescanning it (a quarter of a 522-node step)

    def deliver(self, token: str, header: bytes, payload: bytes) -> None:
        """The Ray transport's receive path (a call on this actor's second thread)."""
        self.transport.deliver(token, header, payload)

    def set_params(self, per_node: dict) -> None:
        with self.busy:
            held = {}
            for i, packed in per_node.items():
                self._from_coordinator(i, "control", "set_params", len(packed))
                held[i] = unpack_arrays(packed)
            self.set_held(held)

    def get_params(self) -> dict:
        self._control("get_params")
        return {i: pack_arrays(p) for i, p in self.params.items()}

    def set_batch(self, batch: int, routed: tuple, draw=None) -> None:
        """The batch size to every node (global), the batch's serial `draw` (global; keys the noise), and the
        boundary signals routed to each (x, y): routed = (packed blobs, {node: index of its blob}), each blob
        unpacked once here (the nodes fed x alone share it, read-only)."""
        self.batch = int(batch)
        self.draw = None if draw is None else int(draw)
        blobs, which = routed
        unpacked = [unpack_arrays(b) if b else {} for b in blobs]
        for i in self.ids:
            self._from_coordinator(i, "control", "set_batch", 0)
            self._from_coordinator(i, "global", "batch", 8)
            if self.noise and draw is not None:
                self._from_coordinator(i, "global", "draw", 8)
            arrays = unpacked[which[i]] if i in which else {}
            for k, v in arrays.items():
                self._from_coordinator(i, "boundary", k, v.numel() * v.element_size())
            self.set_routed(i, arrays)

    def begin(self) -> None:
        self._control("begin")
        self.begin_all()

    def estimate(self) -> dict:
        self._control("estimate")
        return {i: pack_arrays(self.estimate_of(i)) for i in self.ids}

    def update(self) -> None:
        self._control("update")
        for i in self.ids:
            self.update_of(i)

    def output(self, name: str = "free") -> dict:
        self._control("output")
        return {i: pack_arrays({"s": self.saved(i, name)}) for i in self.ids if self.specs[i].is_output}

    def saved_states(self, name: str) -> dict:
        """Every node's saved state of phase `name` (audits; a node whose layout has two fields, (B, 2, w))."""
        self._control("saved_states")
        return {i: pack_arrays({"s": self.saved(i, name)}) for i in self.ids}

    def accumulators(self) -> dict:
        """{node: packed {path: tensor}}: each node's accumulators (NodeSet.accumulators_of; observation, as
        `estimate` is for audits)."""
        self._control("accumulators")
        return {i: pack_arrays(self.accumulators_of(i)) for i in self.ids}

    def kept(self) -> dict:
        """{node: bytes of the tensors it keeps} (NodeSet.kept_bytes)."""
        return {i: self.kept_bytes(i) for i in self.ids}

    def message_log(self, clear: bool = False) -> dict:
        if self.exchange is not None:
            self.exchange.flush()
        out = {"nodes": {i: log.export() for i, log in self.logs.items()}, "refused": self.transport.refused(),
               "unknown": self.unknown.export() + self.transport.overflow()}
        if clear:
            for log in self.logs.values():
                log.clear()
            self.unknown.clear()
            self.transport.clear()
        return out

    def get_state(self) -> dict:
        self._control("get_state")
        return {i: self.pack_state(i) for i in self.ids}

    def set_state(self, per_node: dict) -> None:
        """Each node its own checkpoint (logged as control `checkpoint`); a state for a node not here is refused."""
        with self.busy:
            stray = sorted(set(per_node) - set(self.ids))
            if stray:
                raise ValueError(f"host {self.host_id}: checkpoints for {stray}, which are not on this host")
            for i, packed in per_node.items():
                self._from_coordinator(i, "control", "checkpoint", len(packed))
                self.load_state(i, packed)

    def lineage(self) -> dict:
        """{node: [(batch serial, update hash)]}: the updates each node applied (audits of a recovered run)."""
        return {i: list(self.lineages[i]) for i in self.ids}

    def close(self) -> None:
        if self.beat is not None:
            self.beat.close()
        self.transport.close()

    def park(self) -> None:
        """Close this fabric's sockets and drop its nodes: the process waits, holding nothing of this fabric, for
        `rebuild` (cluster/runtime/warm.py)."""
        self.close()
        vars(self).clear()

    def rebuild(self, host_id: str, specs: dict, protocol, settings) -> None:
        """Host a new fabric's nodes in this parked process: the constructor run again (new nodes, new sockets)."""
        if vars(self):
            raise RuntimeError(f"host {self.host_id} is in use: only a parked host is rebuilt")
        self.__init__(host_id, specs, protocol, settings)

    # ---- phases --------------------------------------------------------------------------------------------
    def run_phase(self, serial: int, phase, record_states: bool = False, record_grads: bool = False) -> dict:
        with self.busy:
            return self._phase(serial, phase, record_states, record_grads)

    def run_batch(self, serial: int, batch: int, routed: tuple, program: tuple, apply: bool = True,
                  draw=None) -> dict:
        """A whole training batch from one control call: the boundary, the program's phases (serials serial,
        serial + 1, ...) and, if `apply`, the local update. Returns "out": the output nodes' predictions (the
        protocol's: the first phase's state), and "residuals": {phase: per-sample residual, max over this host's nodes}."""
        with self.busy:
            self._control("run_batch")
            self.set_batch(batch, routed, draw)
            self.begin_all()
            residuals = {}
            for k, ph in enumerate(program):
                res = self._phase(serial + k, ph)
                residuals[ph.name] = per_sample_max(v["residual"] for v in res.values())
            if apply:
                for i in self.ids:
                    self.update_of(i)
            return {"out": {i: pack_arrays({"s": self.prediction(i, program)})
                            for i in self.ids if self.specs[i].is_output}, "residuals": residuals}

    @torch.no_grad()
    def _phase(self, serial: int, phase, record_states=False, record_grads=False) -> dict:
        ids = self.ids
        if serial <= self.aborted_upto:
            raise Aborted(f"host {self.host_id}, phase {phase.name}: aborted by the coordinator before it began")
        for i in ids:
            self._from_coordinator(i, "control", phase.name, 0)
            self._from_coordinator(i, "global", "beta", 16 if isinstance(phase.beta, complex) else 8)
        rules, bnd, out, rec_s, rec_g = self.enter_all(phase, record_states, record_grads)
        ex = self.exchange
        if ex is None:
            for i in ids:
                self.inboxes[i].start(serial, phase.name, phase.steps, phase.kinds, _NAMES[self.state[i]["dtype"]],
                                      rows(phase, self.batch))
        else:
            ex.start(serial, phase.name, phase.steps, phase.kinds, self.state[ids[0]]["dtype"], rows(phase, self.batch))
        residual = {i: [0.0] * self.batch for i in ids}  # per sample, at the last step
        steps = phase.steps
        state = self.state
        inbox = ((lambda i, t: ex.inbox(i, t, state[i])) if ex is not None
                 else (lambda i, t: self._gather(i, serial, phase, t)))
        try:
            for t in range(steps):
                self._send_all(out, serial, phase, t)
                for i in ids:
                    out[i], r = self.step_node(i, rules[i], inbox(i, t), bnd[i], phase, t, rec_s, rec_g)
                    if r is not None:
                        residual[i] = r.tolist()
                if self.beat is not None:
                    self.beat.beat(serial, t)
            self._send_all(out, serial, phase, steps)
            for i in ids:
                self.exit_node(i, rules[i], inbox(i, steps), bnd[i], phase, rec_g)
        finally:
            if ex is not None:
                ex.finish()
        res = {}
        for i in ids:
            res[i] = {"residual": residual[i]}
            if record_states:
                res[i]["states"] = pack_arrays(recorded(rec_s[i]))
            if record_grads:
                res[i]["grad_steps"] = pack_arrays(step_series(rec_g[i], phase.beta))
        return res

    def _send_all(self, out: dict, serial: int, phase, t: int) -> None:
        """Every node's step-t outbox: per message on its ports, or (frames) into the step buffer, one frame to each
        peer host, and this step's frames waited for."""
        ex = self.exchange
        if ex is None:
            for i in self.ids:
                self._send(i, out[i], serial, phase, t)
            return
        for i in self.ids:
            ex.put(i, out[i], t)
        for peer, header, payload in ex.frames(t):
            self._transmit(peer, header, payload, None, phase, t, peer)
        if not ex.ready(t):
            self._wait(lambda: ex.ready(t), serial, phase, t, lambda: f"host {self.host_id}", lambda: ex.missing(t),
                       "frame", self.unknown)
        ex.receive(t)

    def _send(self, i: str, outbox: dict, serial: int, phase, t: int) -> None:
        """Node i's outbox on its out-ports: {kind: tensor} to every out-port of that kind, {(dst, kind): tensor} to
        one. A targeted send to a node that is not an out-port is a LocalityError."""
        spec = self.specs[i]
        for key in outbox:
            if isinstance(key, tuple) and not any((p.dst, p.kind) == key for p in spec.out_ports):
                raise LocalityError(f"node {i}, phase {phase.name}, step {t}: sends to {key[0]}, which is not a "
                                    f"graph neighbour (no out-port {key[0]}/{key[1]})")
        encoded = {}
        live = carried(phase.kinds)
        for p in spec.out_ports:
            if p.kind not in live:
                continue
            payload = outbox.get((p.dst, p.kind))
            if payload is None:
                payload = outbox.get(p.kind)
            if payload is None:
                raise PhaseError(f"node {i}, phase {phase.name}, step {t}: nothing to send on its port to {p.dst} "
                                 f"(kind {p.kind})")
            host = self.placement[p.dst]
            if host == self.host_id:  # our own code: a failed check is raised (Dropped)
                self.inboxes[p.dst].accept(i, p.kind, phase.name, serial, t, dtype_name(payload), payload.shape,
                                           as_payload(payload))
                continue
            enc = encoded.get(id(payload))
            if enc is None:  # the payload and the per-step header fields, once for every port they go to
                enc = encoded[id(payload)] = (array_bytes(payload), header_suffix(phase.name, serial, t,
                                                                                  dtype_name(payload), payload.shape))
            self._transmit(host, self.prefixes[(i, p.dst, p.kind)] + enc[1], enc[0], i, phase, t, p.dst)

    def _transmit(self, host: str, header: bytes, payload, node, phase, t: int, to: str) -> None:
        """One send to `host` (for `to`: a node, or the peer host of a frame); a failure names the sending node
        (None: this host's frame), the phase and the step (the text only then)."""
        try:
            self.transport.send(host, header, payload)
        except (KeyError, TransportError) as err:
            who = f"host {self.host_id}" if node is None else f"node {node}"
            if isinstance(err, KeyError):
                raise LocalityError(f"{who}, phase {phase.name}, step {t}: host {self.host_id} has no connection "
                                    f"to {host}, which runs {to}") from None
            raise PhaseError(f"{who}, phase {phase.name}, step {t}: sending to {to}: {err}") from None

    def _gather(self, i: str, serial: int, phase, t: int) -> dict:
        """Wait for node i's step-t messages (dispatching whatever arrives to its local destination); the deadline
        is checked after every message, so unrelated traffic cannot postpone it."""
        inbox = self.inboxes[i]
        if not inbox.complete(serial, t):
            self._wait(lambda: inbox.complete(serial, t), serial, phase, t, lambda: f"node {i}",
                       lambda: inbox.missing(serial, t), "message", self.logs[i].drops)
        return inbox.take(serial, t, phase.name, rows(phase, self.batch), self.state[i]["dtype"], self.state[i])

    def _wait(self, done, serial: int, phase, t: int, who, missing, what: str, drops) -> None:
        """Receive (dispatching whatever arrives) until `done()`; the deadline is checked after every message, so
        unrelated traffic cannot postpone it. who, missing: the error's subject and the senders still awaited.
        Callers test `done()` first, so a step whose messages are in costs no closures."""
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if serial <= self.aborted_upto:
                raise Aborted(f"{who()}, phase {phase.name}, step {t}: aborted by the coordinator")
            left = deadline - time.monotonic()
            if left <= 0:
                last = drops.last
                raise PhaseError(f"{who()}, phase {phase.name}, step {t}: no {what} from {missing()} within "
                                 f"{self.timeout_s:g} s" + (f" (last dropped: {last})" if last else ""))
            msg = self.transport.recv(min(self.POLL_S, left))
            if msg is not None:
                self._dispatch(*msg)
            if self.beat is not None:  # alive, waiting: a neighbour's silence is this wait's own timeout
                self.beat.beat(serial, t)

    def _dispatch(self, user: str, header: bytes, payload) -> None:
        """Check one message from the wire against its connection and its destination's ports, then buffer it;
        one that fails a check is dropped and counted against `user`, the connection (payload None: not two
        frames)."""
        try:
            src, dst, kind, phase, serial, step, dtype, shape = decode_header(header)
        except Dropped as err:
            return self.unknown.add(user, err.reason, f"host {self.host_id}: a message on {user}'s connection: {err}")
        if kind in ("abort", "progress"):
            if user != COORDINATOR or kind != "abort":
                return self.unknown.add(user, "control", f"host {self.host_id}: an {kind} message on {user}'s "
                                                         f"connection (claiming {src}); only the coordinator may abort")
            for i in self.ids:
                self._from_coordinator(i, "control", "abort", len(header))
            self.aborted_upto = max(self.aborted_upto, serial)
            return
        if (kind == FRAME) != (self.exchange is not None):
            return self.unknown.add(user, "exchange", f"host {self.host_id}: a {'frame' if kind == FRAME else 'message'}"
                                                      f" on {user}'s connection (claiming {src}); this host exchanges "
                                                      f"{'frames' if self.exchange else 'messages'}")
        if kind == FRAME:
            return self.exchange.arrive(user, src, dst, phase, serial, step, dtype, shape, payload)
        if dst not in self.inboxes:
            return self.unknown.add(user, "not_here", f"host {self.host_id}: a message on {user}'s connection "
                                                      f"(claiming {src}) for {dst!r}, which is not here")
        if self.placement.get(src) != user or payload is None:  # the text only for a drop
            where = f"node {dst}, phase {phase}, step {step}, message on {user}'s connection"
            if self.placement.get(src) != user:
                return self.logs[dst].drops.add(user, "forged", f"{where} claims to come from {src} (forged sender)")
            return self.logs[dst].drops.add(user, "frames", f"{where} (from {src}): not two frames")
        self.inboxes[dst].accept(src, kind, phase, serial, step, dtype, shape, payload, user)
