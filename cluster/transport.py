"""The data plane behind one small interface: `admit`, `connect`, `send`, `recv`, `close`; the sender's identity
comes from the connection, never from a field the sender writes.

Every endpoint admits a table {user: token} of who may connect to it (the coordinator issues one random token per
directed connection over Ray's control plane) and `recv` returns (user, header, payload), the user being the
authenticated identity of the connection the message arrived on.

`ZmqTransport`: one PULL socket bound per host (a Unix socket in a private 0700 directory on one machine, TCP on a
cluster), serving ZeroMQ's PLAIN mechanism; a sender connects one PUSH socket per peer with its own name and the
token that peer issued it. A ZAP handler thread answers each handshake from the table, so a connection that does not
present a valid (user, token) pair never delivers a message, and libzmq stamps every message with the connection's
user id (the frame's "User-Id" property). Refused handshakes are kept for the locality report.
`RayTransport` (the baseline): `send` is a fire-and-forget actor call `deliver(token, header, payload)`; Ray calls
carry no caller identity, so the token itself is the credential, mapped to its user at the receiver.
`LocalTransport`: the same as Ray's, in-process (tests, and hosts run as threads without Ray).

Every buffer is bounded (`hwm` messages, sized by the host so that a fabric in lockstep never reaches it: a
neighbour is at most about a phase ahead and MAX_AHEAD messages per port): ZeroMQ's send and receive high-water
marks per connection (a full one blocks the sender, up to its send timeout; sends that had to wait are counted),
a frame of more than `max_bytes` closes its connection (ZMQ_MAXMSGSIZE), and the token transports' queues (one per
connection, read round-robin) drop what does not fit, counted per user (reason `full`). Refused handshakes are counted per (user, mechanism), the
first few kept whole. Only msgpack headers and raw bytes travel, never pickle.

Trust: the ZeroMQ data plane authenticates every connection. The Ray-call transport and Ray's own control plane
(actor calls, object store, GCS) do not authenticate callers beyond the token and deserialise with pickle: run
them on a trusted network only.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from collections import deque

import zmq

ZERO_COPY_BYTES = 4 << 20  # measured: below this, a copy beats zero-copy's clean-up thread on a busy machine
WIRES = ("auto", "ipc", "tcp")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IPC_PATH_MAX = 100  # sun_path holds 104 to 108 bytes, by platform
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"ep-fabric"
HWM = 10_000           # messages per connection, when the host does not size it
REFUSED_SAMPLES = 20   # refused handshakes kept whole; the rest only counted


class TransportError(RuntimeError):
    """A message could not be handed to the wire: no connection to the peer accepts it (its handshake was refused,
    or it is gone) within the send timeout."""


def resolve_wire(wire: str, host: str) -> str:
    """`fabric.wire` as used: auto means ipc on a loopback host (one machine), tcp otherwise."""
    return wire if wire != "auto" else ("ipc" if host in LOOPBACK else "tcp")


def new_token() -> str:
    return secrets.token_hex(16)


class Refusals:
    """Refused handshakes: a count per (user, mechanism) (at most `keys` of them, then one overflow entry), the
    first REFUSED_SAMPLES kept whole."""

    def __init__(self, keys: int = 256):
        self.counts, self.samples, self.keys = {}, [], keys

    def add(self, user: str, mechanism: str, address: str = "") -> None:
        key = (user[:100], mechanism[:20])
        if key not in self.counts and len(self.counts) >= self.keys:
            key = ("*", "*")
        self.counts[key] = self.counts.get(key, 0) + 1
        if len(self.samples) < REFUSED_SAMPLES:
            self.samples.append({"user": key[0], "mechanism": key[1], "address": address[:200]})

    def export(self) -> list:
        """[{user, mechanism, address, count}]: one entry per (user, mechanism), its first sample's address."""
        first = {}
        for r in self.samples:
            first.setdefault((r["user"], r["mechanism"]), r["address"])
        return [{"user": u, "mechanism": m, "address": first.get((u, m), ""), "count": n}
                for (u, m), n in self.counts.items()]


class ZapHandler(threading.Thread):
    """Answers ZeroMQ's PLAIN handshakes for one context from `table` {user: token} (RFC 27, ZAP 1.0)."""

    def __init__(self, ctx, table: dict):
        super().__init__(daemon=True, name="zap")
        self.table, self.refused = table, Refusals()
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def run(self) -> None:
        try:
            while True:
                msg = self.sock.recv_multipart()
                version, request_id, _domain, address, _identity, mechanism = msg[:6]
                cred = msg[6:]
                user = cred[0].decode("utf-8", "replace") if cred else ""
                ok = mechanism == b"PLAIN" and len(cred) == 2 and self.table.get(user) == cred[1].decode(
                    "utf-8", "replace")
                if not ok:
                    self.refused.add(user, mechanism.decode("ascii", "replace"), address.decode("utf-8", "replace"))
                self.sock.send_multipart([version, request_id, b"200" if ok else b"400",
                                          b"OK" if ok else b"refused", cred[0] if ok else b"", b""])
        except zmq.ContextTerminated:
            pass
        finally:
            self.sock.close(0)


class ZmqTransport:
    kind = "zmq"

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto", send_timeout_s: float = 30.0,
                 hwm: int = HWM, max_bytes: int | None = None, ports=None):
        """Bind the PULL socket: `ipc` (a Unix socket in a private temp dir) or `tcp` on `host`; `auto` takes ipc
        when `host` is loopback (one machine) and tcp otherwise. Only admitted users can connect to it. Queues
        hold `hwm` messages per connection each way; a send waits at most `send_timeout_s` for room on a
        connection that accepts it, then raises TransportError. A frame over `max_bytes` (+ 64 KiB for the
        header) closes its connection."""
        if wire not in WIRES:
            raise ValueError(f"fabric.wire: expected one of {WIRES}, got {wire!r}")
        self.me, self.send_timeout_s, self.hwm = me, float(send_timeout_s), int(hwm)
        self.blocked = 0  # sends that found the peer's queue full and had to wait
        self.ctx = zmq.Context()
        self.admitted = {}
        self.zap = ZapHandler(self.ctx, self.admitted)
        self.zap.start()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, self.hwm)
        if max_bytes is not None:
            self.pull.setsockopt(zmq.MAXMSGSIZE, int(max_bytes) + (64 << 10))
        self.pull.plain_server = True
        self.pull.zap_domain = ZAP_DOMAIN
        self.ipc_dir = None
        if resolve_wire(wire, host) == "ipc":
            self.ipc_dir = tempfile.mkdtemp(prefix="fabric-")  # mode 0700: only this user can connect
            if len(self.ipc_dir) > IPC_PATH_MAX - 3:  # a long TMPDIR: Unix socket paths are short
                shutil.rmtree(self.ipc_dir)
                self.ipc_dir = tempfile.mkdtemp(prefix="fabric-", dir="/tmp")
            self.address = f"ipc://{self.ipc_dir}/in"
            self.pull.bind(self.address)
        else:
            if ports:  # fabric.ports [lo, hi]: a range a firewall lets through
                port = self.pull.bind_to_random_port(f"tcp://{host}", ports[0], ports[1] + 1,
                                                     max(100, min(ports[1] + 1 - ports[0], 1000)))
            else:
                port = self.pull.bind_to_random_port(f"tcp://{host}")
            if host in ("0.0.0.0", "*"):  # bound on every interface (a cluster): advertise this node's address
                import ray
                host = ray.util.get_node_ip_address()
            self.address = f"tcp://{host}:{port}"
        self.push = {}
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)

    def admit(self, users: dict) -> None:
        """Let each user connect with its token (a ZAP handshake checks both)."""
        self.admitted.update(users)

    def refused(self) -> list:
        return self.zap.refused.export()

    def overflow(self) -> list:
        """Messages dropped for want of room: none here (a full queue makes the sender wait)."""
        return []

    def clear(self) -> None:
        self.blocked = 0

    def push_socket(self):
        """A PUSH socket as every connection has: no linger, `hwm` messages queued, sends bounded by the send
        timeout."""
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.send_timeout_s * 1000)))
        return sock

    def connect(self, peer: str, address, token: str) -> None:
        sock = self.push_socket()
        sock.plain_username = self.me.encode()
        sock.plain_password = token.encode()
        sock.connect(address)
        self.push[peer] = sock

    def send(self, peer: str, header: bytes, payload) -> None:
        sock = self.push[peer]
        try:
            sock.send(header, zmq.SNDMORE | zmq.NOBLOCK)
        except zmq.Again:
            self.blocked += 1
            self._wait_send(sock, peer, header)
        sock.send(payload, copy=len(payload) < ZERO_COPY_BYTES)  # a message's frames go together: never waits

    def _wait_send(self, sock, peer, header) -> None:
        try:
            sock.send(header, zmq.SNDMORE)
        except zmq.Again:
            raise TransportError(f"{self.me}: no connection to {peer} took a message within {self.send_timeout_s:g} s"
                                 f" (its handshake refused, or it is gone, or its queue stays full)") from None

    def recv(self, timeout_s: float):
        """One message as (user, header bytes, payload buffer), or None after timeout_s. A message already queued is
        taken without a poll (a step's messages arrive in bursts); frame by frame, a third of recv_multipart's
        cost. The user is the connection's authenticated identity (ZAP), stamped on the frame by libzmq."""
        try:
            h = self.pull.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if not self.poller.poll(int(timeout_s * 1000)):
                return None
            h = self.pull.recv(copy=False)
        user = h.get("User-Id")
        if not h.more:
            return user, h.bytes, None  # None: not two frames, which the receiver drops
        p = self.pull.recv(copy=False)
        if not p.more:
            return user, h.bytes, p.buffer
        while self.pull.recv(copy=False).more:  # drain the extra frames, so the next message starts clean
            pass
        return user, h.bytes, None

    def close(self) -> None:
        for s in self.push.values():
            s.close(0)
        self.pull.close(0)
        self.ctx.term()
        self.zap.join(timeout=5)
        if self.ipc_dir:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


class _TokenTransport:
    """A transport whose credential is the token presented with every message (Ray calls, in-process queues). Each
    token (one directed connection) has its own queue of at most `hwm` messages, read round-robin, so a connection
    that floods fills only its own (what does not fit is dropped and counted) and its neighbours' get through."""

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto", hwm: int = HWM):
        self.me, self.hwm = me, int(hwm)
        self.queues = {}    # token -> deque of (user, header, payload)
        self.turn = 0       # round-robin position over the queues
        self.pending = 0
        self.ready = threading.Condition()
        self.by_token = {}
        self.peers = {}
        self._refused = Refusals()
        self.dropped = {}  # user -> messages that found its connection's queue full

    def admit(self, users: dict) -> None:
        self.by_token.update({token: user for user, token in users.items()})

    def refused(self) -> list:
        return self._refused.export()

    def overflow(self) -> list:
        """[{user, reason "full", count, why}] for the messages that found their connection's queue full."""
        return [{"user": u, "reason": "full", "count": n, "why": f"{self.me}: the connection's receive queue "
                 f"({self.hwm} messages) was full"} for u, n in sorted(self.dropped.items())]

    def clear(self) -> None:
        self.dropped.clear()

    def deliver(self, token: str, header: bytes, payload: bytes) -> None:
        user = self.by_token.get(token)
        if user is None:
            self._refused.add("", "token")
            return
        with self.ready:
            q = self.queues.get(token)
            if q is None:
                q = self.queues[token] = deque()
            if len(q) >= self.hwm:
                self.dropped[user] = self.dropped.get(user, 0) + 1
                return
            q.append((user, header, payload))
            self.pending += 1
            self.ready.notify()

    def recv(self, timeout_s: float):
        with self.ready:
            if not self.pending and not self.ready.wait_for(lambda: self.pending, timeout_s):
                return None
            queues = list(self.queues.values())
            for k in range(len(queues)):
                q = queues[(self.turn + k) % len(queues)]
                if q:
                    self.turn = (self.turn + k + 1) % len(queues)
                    self.pending -= 1
                    return q.popleft()
        return None

    def close(self) -> None:
        self.peers.clear()


class RayTransport(_TokenTransport):
    kind = "ray"

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto", hwm: int = HWM):
        super().__init__(me, host, wire, hwm)
        self.address = None  # the fabric passes actor handles instead

    def connect(self, peer: str, handle, token: str) -> None:
        self.peers[peer] = (handle, token)

    def send(self, peer: str, header: bytes, payload) -> None:
        handle, token = self.peers[peer]
        handle.deliver.remote(token, header, bytes(payload))


class LocalTransport(_TokenTransport):
    """In-process queues, for running hosts as threads without Ray (unit tests of the runtime)."""

    kind = "local"
    registry: dict = {}

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto", hwm: int = HWM):
        super().__init__(me, host, wire, hwm)
        self.address = f"local:{id(self)}"
        LocalTransport.registry[self.address] = self

    def connect(self, peer: str, address, token: str) -> None:
        self.peers[peer] = (LocalTransport.registry[address], token)

    def send(self, peer: str, header: bytes, payload) -> None:
        target, token = self.peers[peer]
        target.deliver(token, header, bytes(payload))

    def close(self) -> None:
        super().close()
        LocalTransport.registry.pop(self.address, None)


TRANSPORTS = {"zmq": ZmqTransport, "ray": RayTransport, "local": LocalTransport}


def make_transport(kind: str, me: str, host: str = "127.0.0.1", wire: str = "auto", send_timeout_s: float = 30.0,
                   hwm: int = HWM, max_bytes: int | None = None, ports=None):
    if kind not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {tuple(TRANSPORTS)}, got {kind!r}")
    if kind == "zmq":
        return ZmqTransport(me, host, wire, send_timeout_s, hwm, max_bytes, ports)
    return TRANSPORTS[kind](me, host, wire, hwm)
