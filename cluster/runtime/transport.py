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
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

ZERO_COPY_BYTES = 4 << 20  # measured: below this, a copy beats zero-copy's clean-up thread on a busy machine
WIRES = ("auto", "ipc", "tcp")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IPC_PATH_MAX = 100  # sun_path holds 104 to 108 bytes, by platform
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"ep-fabric"
MONITOR_ENDPOINT = "inproc://ep-fabric.monitor"
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
HWM = 10_000           # messages per connection, when the host does not size it
REFUSED_SAMPLES = 20   # refused handshakes kept whole; the rest only counted


class TransportError(RuntimeError):
    """A message could not be handed to the wire: no connection to the peer accepts it (its handshake was refused,
    or it is gone) within the send timeout."""


def resolve_wire(wire: str, host: str) -> str:
    """`fabric.wire` as used: auto means ipc on a loopback host (one machine), tcp otherwise."""
    return wire if wire != "auto" else ("ipc" if host in LOOPBACK else "tcp")


def new_token(curve: bool = False) -> str:
    """The credential of one directed connection: a random PLAIN password, or (CURVE) a client secret key in Z85,
    whose public half the receiver admits."""
    return zmq.curve_keypair()[1].decode() if curve else secrets.token_hex(16)


def split_endpoint(endpoint) -> tuple:
    """(address, the server's CURVE public key or None) of what a ZmqTransport's `endpoint` advertises."""
    return (endpoint[0], endpoint[1]) if isinstance(endpoint, (tuple, list)) else (endpoint, None)


def present(sock, me: str, token: str, server_key=None) -> None:
    """Credentials on a connecting socket: PLAIN (its name, the token), or CURVE (the token as its secret key,
    against the server's public key: the traffic is encrypted, and the receiver knows the user by the public key)."""
    if server_key is None:
        sock.plain_username, sock.plain_password = me.encode(), token.encode()
    else:
        secret = token.encode()
        sock.curve_secretkey, sock.curve_publickey = secret, zmq.curve_public(secret)
        sock.curve_serverkey = server_key.encode()


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
    """Answers ZeroMQ's handshakes for one context (RFC 27, ZAP 1.0) from `table`: {user: token} under PLAIN,
    {user: client public key (Z85)} under CURVE. Handshakes that fail before ZAP (a peer speaking the other
    mechanism, or garbage) are counted from the socket monitor at MONITOR_ENDPOINT, as mechanism `handshake`."""

    def __init__(self, ctx, table: dict, curve: bool = False):
        super().__init__(daemon=True, name="zap")
        self.ctx, self.table, self.curve, self.refused = ctx, table, curve, Refusals()
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def user_of(self, mechanism: bytes, cred: list) -> tuple:
        """(user, whether the credential admits it)."""
        if self.curve:
            if mechanism != b"CURVE" or len(cred) != 1:
                return "", False
            key = z85.encode(cred[0]).decode()
            user = next((u for u, k in self.table.items() if k == key), "")
            return (user, True) if user else (key[:12] + "...", False)
        user = cred[0].decode("utf-8", "replace") if cred else ""
        return user, (mechanism == b"PLAIN" and len(cred) == 2
                      and self.table.get(user) == cred[1].decode("utf-8", "replace"))

    def run(self) -> None:
        monitor = self.ctx.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(MONITOR_ENDPOINT)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if monitor in ready:
                    event = recv_monitor_message(monitor)
                    if event["event"] & HANDSHAKE_FAILED:
                        self.refused.add("", "handshake", event["endpoint"].decode("utf-8", "replace"))
                if self.sock not in ready:
                    continue
                msg = self.sock.recv_multipart()
                version, request_id, _domain, address, _identity, mechanism = msg[:6]
                user, ok = self.user_of(mechanism, msg[6:])
                if not ok:
                    self.refused.add(user, mechanism.decode("ascii", "replace"), address.decode("utf-8", "replace"))
                self.sock.send_multipart([version, request_id, b"200" if ok else b"400",
                                          b"OK" if ok else b"refused", user.encode() if ok else b"", b""])
        except zmq.ContextTerminated:
            pass
        finally:
            self.sock.close(0)
            monitor.close(0)


class ZmqTransport:
    kind = "zmq"

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto", send_timeout_s: float = 30.0,
                 hwm: int = HWM, max_bytes: int | None = None, ports=None, curve: bool = False):
        """Bind the PULL socket: `ipc` (a Unix socket in a private temp dir) or `tcp` on `host`; `auto` takes ipc
        when `host` is loopback (one machine) and tcp otherwise. Only admitted users can connect to it. Queues
        hold `hwm` messages per connection each way; a send waits at most `send_timeout_s` for room on a
        connection that accepts it, then raises TransportError. A frame over `max_bytes` (+ 64 KiB for the
        header) closes its connection. `curve`: ZeroMQ CURVE instead of PLAIN (encrypted; the server's public
        key travels with the address as `endpoint`)."""
        if wire not in WIRES:
            raise ValueError(f"fabric.wire: expected one of {WIRES}, got {wire!r}")
        self.me, self.send_timeout_s, self.hwm = me, float(send_timeout_s), int(hwm)
        self.blocked = 0  # sends that found the peer's queue full and had to wait
        if curve and not zmq.has("curve"):
            raise ValueError("fabric.curve: this pyzmq's libzmq was built without CURVE (libsodium)")
        self.ctx = zmq.Context()
        self.admitted, self.curve = {}, bool(curve)
        self.zap = ZapHandler(self.ctx, self.admitted, self.curve)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.monitor(MONITOR_ENDPOINT, HANDSHAKE_FAILED)
        self.zap.start()
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, self.hwm)
        if max_bytes is not None:
            self.pull.setsockopt(zmq.MAXMSGSIZE, int(max_bytes) + (64 << 10))
        if self.curve:
            public, secret = zmq.curve_keypair()
            self.pull.curve_server, self.pull.curve_secretkey, self.pull.curve_publickey = True, secret, public
            self.server_key = public.decode()
        else:
            self.pull.plain_server, self.server_key = True, None
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
        self.endpoint = self.address if self.server_key is None else (self.address, self.server_key)
        self.push = {}
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)

    def admit(self, users: dict) -> None:
        """Let each user connect with its token (a ZAP handshake checks both; under CURVE, the token's public key)."""
        self.admitted.update({u: zmq.curve_public(t.encode()).decode() for u, t in users.items()} if self.curve
                             else users)

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

    def connect(self, peer: str, endpoint, token: str) -> None:
        address, server_key = split_endpoint(endpoint)
        sock = self.push_socket()
        present(sock, self.me, token, server_key)
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
        self.pull.disable_monitor()
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

    @property
    def endpoint(self):
        return self.address

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
                   hwm: int = HWM, max_bytes: int | None = None, ports=None, curve: bool = False):
    if kind not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {tuple(TRANSPORTS)}, got {kind!r}")
    if kind == "zmq":
        return ZmqTransport(me, host, wire, send_timeout_s, hwm, max_bytes, ports, curve)
    return TRANSPORTS[kind](me, host, wire, hwm)
