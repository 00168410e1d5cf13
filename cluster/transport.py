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
"""
from __future__ import annotations

import queue
import secrets
import shutil
import tempfile
import threading

import zmq

ZERO_COPY_BYTES = 4 << 20  # measured: below this, a copy beats zero-copy's clean-up thread on a busy machine
WIRES = ("auto", "ipc", "tcp")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IPC_PATH_MAX = 100  # sun_path holds 104 to 108 bytes, by platform
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"ep-fabric"


class TransportError(RuntimeError):
    """A message could not be handed to the wire: no connection to the peer accepts it (its handshake was refused,
    or it is gone) within the send timeout."""


def resolve_wire(wire: str, host: str) -> str:
    """`fabric.wire` as used: auto means ipc on a loopback host (one machine), tcp otherwise."""
    return wire if wire != "auto" else ("ipc" if host in LOOPBACK else "tcp")


def new_token() -> str:
    return secrets.token_hex(16)


class ZapHandler(threading.Thread):
    """Answers ZeroMQ's PLAIN handshakes for one context from `table` {user: token} (RFC 27, ZAP 1.0)."""

    def __init__(self, ctx, table: dict):
        super().__init__(daemon=True, name="zap")
        self.table, self.refused = table, []
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
                    self.refused.append({"user": user, "mechanism": mechanism.decode("ascii", "replace"),
                                         "address": address.decode("utf-8", "replace")})
                self.sock.send_multipart([version, request_id, b"200" if ok else b"400",
                                          b"OK" if ok else b"refused", cred[0] if ok else b"", b""])
        except zmq.ContextTerminated:
            pass
        finally:
            self.sock.close(0)


class ZmqTransport:
    kind = "zmq"

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto", send_timeout_s: float = 30.0,
                 ports=None):
        """Bind the PULL socket: `ipc` (a Unix socket in a private temp dir) or `tcp` on `host`; `auto` takes ipc
        when `host` is loopback (one machine) and tcp otherwise. Only admitted users can connect to it. A send
        waits at most `send_timeout_s` for a connection that accepts it (queues are unbounded, so only a peer with
        no live connection, e.g. a refused handshake, makes a send wait), then raises TransportError."""
        if wire not in WIRES:
            raise ValueError(f"fabric.wire: expected one of {WIRES}, got {wire!r}")
        self.me, self.send_timeout_s = me, float(send_timeout_s)
        self.ctx = zmq.Context()
        self.admitted = {}
        self.zap = ZapHandler(self.ctx, self.admitted)
        self.zap.start()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, 0)
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
        return list(self.zap.refused)

    def push_socket(self):
        """A PUSH socket as every connection has: no linger, unbounded queue, sends bounded by the send timeout."""
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
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
            sock.send(header, zmq.SNDMORE)
        except zmq.Again:
            raise TransportError(f"{self.me}: no connection to {peer} took a message within {self.send_timeout_s:g} s"
                                 f" (its handshake refused, or it is gone)") from None
        sock.send(payload, copy=len(payload) < ZERO_COPY_BYTES)  # a message's frames go together: never waits

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
            return user, h.bytes, b""
        p = self.pull.recv(copy=False)
        if not p.more:
            return user, h.bytes, p.buffer
        while self.pull.recv(copy=False).more:  # drain the extra frames, so the next message starts clean
            pass
        return user, h.bytes, None  # None: more than two frames, which the receiver rejects

    def close(self) -> None:
        for s in self.push.values():
            s.close(0)
        self.pull.close(0)
        self.ctx.term()
        self.zap.join(timeout=5)
        if self.ipc_dir:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


class _TokenTransport:
    """A transport whose credential is the token presented with every message (Ray calls, in-process queues)."""

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto"):
        self.me = me
        self.inbox = queue.SimpleQueue()
        self.by_token = {}
        self.peers = {}
        self._refused = []

    def admit(self, users: dict) -> None:
        self.by_token.update({token: user for user, token in users.items()})

    def refused(self) -> list:
        return list(self._refused)

    def deliver(self, token: str, header: bytes, payload: bytes) -> None:
        user = self.by_token.get(token)
        if user is None:
            self._refused.append({"user": "", "mechanism": "token", "address": ""})
            return
        self.inbox.put((user, header, payload))

    def recv(self, timeout_s: float):
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.peers.clear()


class RayTransport(_TokenTransport):
    kind = "ray"

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto"):
        super().__init__(me, host, wire)
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

    def __init__(self, me: str, host: str = "127.0.0.1", wire: str = "auto"):
        super().__init__(me, host, wire)
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
                   ports=None):
    if kind not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {tuple(TRANSPORTS)}, got {kind!r}")
    if kind == "zmq":
        return ZmqTransport(me, host, wire, send_timeout_s, ports)
    return TRANSPORTS[kind](me, host, wire)
