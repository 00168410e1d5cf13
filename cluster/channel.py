"""A node's endpoint on the data plane: locality guard, typed schema check, step buffer, message log.

Per step a node `broadcast`s its signal to its neighbours and `gather`s theirs tagged with the same
(phase serial, step). Messages that arrive early (a neighbour already at step t+1) wait in a buffer; a
message is checked on receipt (kind, dtype, shape) and a mismatch raises an error naming node, phase and
step. Every wait has a timeout whose message names the neighbours still missing. An abort from the
coordinator (`abort(upto)`, or an "abort" message on the data plane) stops every phase with serial <= upto.
"""
from __future__ import annotations

import time

import numpy as np

from cluster.message_log import MessageLog
from cluster.messages import (ITEMSIZE, NUMPY_DTYPE, MessageError, array_bytes, decode_header, encode_header,
                              ndarray_from, torch_dtype)
from nodes.model import COORDINATOR


class LocalityError(RuntimeError):
    """A node tried to talk to a node that is not its graph neighbour."""


class PhaseError(RuntimeError):
    """A phase failed at a node (timeout, divergence, abort); the text names node, phase and step."""


class Aborted(PhaseError):
    pass


class NodeChannel:
    POLL_S = 0.05

    def __init__(self, node_id: str, transport, widths: dict, dtype: str, log: MessageLog,
                 timeout_s: float = 60.0):
        self.node_id = node_id
        self.transport = transport
        self.widths = dict(widths)           # neighbour id -> number of units it sends
        self.allowed = set(widths)           # structural guard: endpoints only for neighbours
        self.extra = set()                   # links added unchecked (fault injection in tests)
        self.dtype = dtype
        torch_dtype(dtype)  # a known dtype, or a MessageError
        self.itemsize, self.np_dtype = ITEMSIZE[dtype], NUMPY_DTYPE[dtype]
        self.log = log
        self.timeout_s = float(timeout_s)
        self.buffer = {}
        self.aborted_upto = -1  # phases with serial <= this are aborted

    def abort(self, upto: int) -> None:
        self.aborted_upto = max(self.aborted_upto, int(upto))

    def connect(self, peers: dict, unchecked=()) -> None:
        for peer, address in peers.items():
            if peer not in self.allowed and peer not in unchecked:
                raise LocalityError(f"node {self.node_id}: {peer} is not a graph neighbour; no endpoint for it")
            if peer in unchecked:
                self.extra.add(peer)
            self.transport.connect(peer, address)

    def send(self, dst: str, kind: str, phase: str, serial: int, step: int, t) -> None:
        if dst not in self.allowed and dst not in self.extra:
            raise LocalityError(f"node {self.node_id}, phase {phase}, step {step}: "
                                f"send to {dst}, which is not a graph neighbour")
        self.transport.send(dst, encode_header(self.node_id, kind, phase, serial, step, t), array_bytes(t))

    def broadcast(self, phase: str, serial: int, step: int, t, peers=None) -> None:
        header = encode_header(self.node_id, "state", phase, serial, step, t)
        payload = array_bytes(t)
        for dst in (self.widths if peers is None else peers):
            self.transport.send(dst, header, payload)

    def _accept(self, header: bytes, payload):
        """Check one message and buffer it under (src, serial, step), which it returns; None for an abort."""
        src, kind, ph, serial, step, dtype, shape = decode_header(header)
        width = self.widths.get(src)
        if (kind == "state" and dtype == self.dtype and width is not None and len(shape) == 2 and shape[1] == width
                and len(payload) == shape[0] * width * self.itemsize):  # the usual message: checks passed
            t = np.frombuffer(payload, self.np_dtype).reshape(shape)
        elif kind == "abort" and src == COORDINATOR:
            self.log.record(src, self.node_id, "control", "abort", step, len(header))
            self.abort(serial)
            return None
        else:
            t = self._full_check(src, kind, ph, step, dtype, shape, width, payload)
        self.log.record(src, self.node_id, kind, ph, step, len(header) + t.nbytes)
        key = (src, serial, step)
        self.buffer[key] = t
        return key

    def _full_check(self, src, kind, ph, step, dtype, shape, width, payload):
        """The full check of a message the fast path did not pass: its array, or a MessageError naming node,
        phase, step and sender. A message from a non-neighbour is delivered all the same: the log shows it and
        the locality report flags it."""
        problem = None
        if kind != "state":
            problem = f"unexpected kind {kind!r}"
        elif dtype != self.dtype and (width is not None or src in self.extra):
            problem = f"dtype {dtype}, expected {self.dtype}"
        elif width is not None and (len(shape) != 2 or shape[1] != width):
            problem = f"shape {shape}, expected (B, {width})"
        else:
            try:
                return ndarray_from(payload, dtype, shape)
            except MessageError as err:
                problem = str(err)
        raise MessageError(f"node {self.node_id}, phase {ph}, step {step}, message from {src}: {problem}")

    def gather(self, phase: str, serial: int, step: int, sources) -> dict:
        """Wait for the step-`step` message of every node in `sources`; returns {src: read-only ndarray view
        of the received bytes} (the node copies them into its own aligned buffers)."""
        out = {}
        missing = set()
        for src in sources:
            t = self.buffer.pop((src, serial, step), None)
            if t is None:
                missing.add(src)
            else:
                out[src] = t
        deadline = time.monotonic() + self.timeout_s if missing else 0.0
        while missing:
            if serial <= self.aborted_upto:
                raise Aborted(f"node {self.node_id}, phase {phase}, step {step}: aborted by the coordinator")
            msg = self.transport.recv(self.POLL_S)
            if msg is None:
                if time.monotonic() > deadline:
                    raise PhaseError(f"node {self.node_id}, phase {phase}, step {step}: no message from "
                                     f"{sorted(missing)} within {self.timeout_s:g} s")
                continue
            key = self._accept(msg[0], msg[1])
            if key is not None and key[0] in missing and key[1] == serial and key[2] == step:
                out[key[0]] = self.buffer.pop(key)
                missing.discard(key[0])
        return out

    def close(self) -> None:
        self.transport.close()
