"""The neighbour data plane behind one small interface: `connect`, `send`, `recv`, `close`.

`ZmqTransport`: one PULL socket bound per node (a Unix socket on one machine, TCP on a cluster) and one
persistent PUSH socket per neighbour; a message is two frames (msgpack header, raw array bytes); payloads
over ZERO_COPY_BYTES are sent zero-copy.
`RayTransport`: the baseline; `send` is a fire-and-forget actor call `deliver(header, payload)` on the
neighbour (never waited on, so no actor blocks on another's method), `recv` reads the inbox queue that
`deliver` fills from the actor's second thread.
"""
from __future__ import annotations

import queue
import shutil
import tempfile

import zmq

ZERO_COPY_BYTES = 4 << 20  # measured: below this, a copy beats zero-copy's clean-up thread on a busy machine
WIRES = ("auto", "ipc", "tcp")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
IPC_PATH_MAX = 100  # sun_path holds 104 to 108 bytes, by platform


def resolve_wire(wire: str, host: str) -> str:
    """`fabric.wire` as used: auto means ipc on a loopback host (one machine), tcp otherwise."""
    return wire if wire != "auto" else ("ipc" if host in LOOPBACK else "tcp")


class ZmqTransport:
    kind = "zmq"

    def __init__(self, host: str = "127.0.0.1", wire: str = "auto"):
        """Bind the PULL socket: `ipc` (a Unix socket in a private temp dir) or `tcp` on `host`; `auto` takes
        ipc when `host` is loopback (one machine) and tcp otherwise."""
        if wire not in WIRES:
            raise ValueError(f"fabric.wire: expected one of {WIRES}, got {wire!r}")
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.ipc_dir = None
        if resolve_wire(wire, host) == "ipc":
            self.ipc_dir = tempfile.mkdtemp(prefix="fabric-")  # mode 0700: only this user can connect
            if len(self.ipc_dir) > IPC_PATH_MAX - 3:  # a long TMPDIR: Unix socket paths are short
                shutil.rmtree(self.ipc_dir)
                self.ipc_dir = tempfile.mkdtemp(prefix="fabric-", dir="/tmp")
            self.address = f"ipc://{self.ipc_dir}/in"
            self.pull.bind(self.address)
        else:
            port = self.pull.bind_to_random_port(f"tcp://{host}")
            if host in ("0.0.0.0", "*"):  # bound on every interface (a cluster): advertise this node's address
                import ray
                host = ray.util.get_node_ip_address()
            self.address = f"tcp://{host}:{port}"
        self.push = {}
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)

    def connect(self, peer: str, address) -> None:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(address)
        self.push[peer] = sock

    def send(self, peer: str, header: bytes, payload) -> None:
        sock = self.push[peer]
        sock.send(header, zmq.SNDMORE)
        sock.send(payload, copy=len(payload) < ZERO_COPY_BYTES)

    def recv(self, timeout_s: float):
        """One message as (header bytes, payload buffer), or None after timeout_s. A message already queued is
        taken without a poll (a step's messages arrive in bursts); frame by frame, a third of recv_multipart's
        cost, which asks the socket for RCVMORE through pyzmq's Python layer."""
        try:
            h = self.pull.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if not self.poller.poll(int(timeout_s * 1000)):
                return None
            h = self.pull.recv(copy=False)
        if not h.more:
            return h.bytes, b""  # not two frames: an empty payload, which the channel's length check rejects
        p = self.pull.recv(copy=False)
        if not p.more:
            return h.bytes, p.buffer
        while self.pull.recv(copy=False).more:  # drain the extra frames, so the next message starts clean
            pass
        return h.bytes, b""

    def close(self) -> None:
        for s in self.push.values():
            s.close(0)
        self.pull.close(0)
        self.ctx.term()
        if self.ipc_dir:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


class RayTransport:
    kind = "ray"

    def __init__(self, host: str = "127.0.0.1", wire: str = "auto"):
        self.address = None  # the fabric passes actor handles instead
        self.inbox = queue.SimpleQueue()
        self.handles = {}

    def connect(self, peer: str, handle) -> None:
        self.handles[peer] = handle

    def send(self, peer: str, header: bytes, payload) -> None:
        self.handles[peer].deliver.remote(header, bytes(payload))

    def deliver(self, header: bytes, payload: bytes) -> None:
        self.inbox.put((header, payload))

    def recv(self, timeout_s: float):
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.handles.clear()


class LocalTransport:
    """In-process queues, for running nodes without Ray (unit tests of the node behaviour)."""

    kind = "local"
    registry: dict = {}

    def __init__(self, host: str = "127.0.0.1", wire: str = "auto"):
        self.inbox = queue.SimpleQueue()
        self.address = f"local:{id(self)}"
        LocalTransport.registry[self.address] = self
        self.peers = {}

    def connect(self, peer: str, address) -> None:
        self.peers[peer] = LocalTransport.registry[address]

    def send(self, peer: str, header: bytes, payload) -> None:
        self.peers[peer].inbox.put((header, bytes(payload)))

    def recv(self, timeout_s: float):
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        LocalTransport.registry.pop(self.address, None)


TRANSPORTS = {"zmq": ZmqTransport, "ray": RayTransport, "local": LocalTransport}


def make_transport(kind: str, host: str = "127.0.0.1", wire: str = "auto"):
    if kind not in TRANSPORTS:
        raise ValueError(f"transport: expected one of {tuple(TRANSPORTS)}, got {kind!r}")
    return TRANSPORTS[kind](host, wire)

