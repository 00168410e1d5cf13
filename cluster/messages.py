"""Wire format: msgpack headers and raw array bytes; never pickle (DESIGN.md "The pieces"; docs/guide/reliability.md).

A data-plane message is two frames: a msgpack header [src, dst, kind, phase, serial, step, dtype, shape] and the
array's raw bytes (C order). `src` is a claim the receiver checks against the connection the message arrived on
(cluster/runtime/transport.py); `dst` is the logical node it is for (a host may run many). An abort is a header of kind
"abort" with `serial` = the highest phase serial to stop, and an empty frame; a heartbeat is a header of kind
"progress". Dtypes travel by name, complex ones included. `pack_arrays` encodes a dict of arrays as one msgpack map
{name: [dtype, shape, bytes]} for control-plane calls and checkpoints.
"""
from __future__ import annotations

import math

import msgpack
import numpy as np
import torch

DTYPES = ("float32", "float64", "complex64", "complex128", "int64")
_TORCH = {"float32": torch.float32, "float64": torch.float64,
          "complex64": torch.complex64, "complex128": torch.complex128, "int64": torch.int64}
ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in _TORCH.items()}
NUMPY_DTYPE = {k: np.dtype(k) for k in _TORCH}
HEADER_FIELDS = 8


MAX_HEADER_BYTES = 1024  # a header's msgpack: eight short fields
MAX_NAME = 200           # the longest node, kind, phase or dtype name a header may carry
MAX_SERIAL = 1 << 62     # serials and steps are 0 <= n < MAX_SERIAL
_LIMITS = dict(raw=False, strict_map_key=True, max_str_len=MAX_NAME, max_bin_len=0, max_array_len=HEADER_FIELDS,
               max_map_len=0, max_ext_len=0)


class MessageError(RuntimeError):
    """A malformed, forged, duplicate or misrouted message. The text names node, phase, step and connection."""


class Dropped(MessageError):
    """A message that fails a check; `reason` is one of cluster/admission.REASONS. On the wire it is dropped and
    counted; from a node on the same host (our own code) it is raised."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def torch_dtype(name: str):
    if name not in _TORCH:
        raise MessageError(f"unsupported dtype {name!r}; expected one of {DTYPES}")
    return _TORCH[name]


HEADER_TAG = b"\x98"  # msgpack's fixarray of 8: a header is this tag, then its 8 fields packed one after another


def header_prefix(src: str, dst: str, kind: str) -> bytes:
    """The fields of a header that are fixed for a port (packed once per port, not per message)."""
    return HEADER_TAG + msgpack.packb(src) + msgpack.packb(dst) + msgpack.packb(kind)


def header_suffix(phase: str, serial: int, step: int, dtype: str, shape) -> bytes:
    """The fields that change per step (packed once per payload, shared by every port it goes to)."""
    return (msgpack.packb(phase) + msgpack.packb(serial) + msgpack.packb(step) + msgpack.packb(dtype)
            + msgpack.packb(list(shape)))


def encode_header(src: str, dst: str, kind: str, phase: str, serial: int, step: int, dtype: str, shape) -> bytes:
    """msgpack [src, dst, kind, phase, serial, step, dtype, shape]: the same bytes as packb of the list."""
    return header_prefix(src, dst, kind) + header_suffix(phase, serial, step, dtype, shape)


def encode_control(src: str, kind: str, serial: int, step: int = -1, phase: str = "") -> bytes:
    """A header with no payload: an abort (stop every phase with serial <= `serial`) or a heartbeat."""
    return msgpack.packb([src, "", kind, phase, int(serial), int(step), "", []])


def decode_header(frame) -> list:
    """The header's fields, or Dropped ("undecodable": not msgpack within strict limits, no maps, bins or
    extensions; "malformed": not 8 fields of the schema's types, serial and step in [0, 2^62), at most 4 dims)."""
    if len(frame) > MAX_HEADER_BYTES:
        raise Dropped("undecodable", f"header of {len(frame)} bytes (at most {MAX_HEADER_BYTES})")
    try:
        h = msgpack.unpackb(frame, **_LIMITS)
    except Exception as err:  # msgpack raises several types for random bytes
        raise Dropped("undecodable", f"undecodable header ({type(err).__name__})") from None
    if type(h) is list and len(h) == HEADER_FIELDS:
        src, dst, kind, phase, serial, step, dtype, shape = h
        if (type(src) is str and type(dst) is str and type(kind) is str and type(phase) is str
                and type(serial) is int and type(step) is int and type(dtype) is str and type(shape) is list
                and 0 <= serial < MAX_SERIAL and -1 <= step < MAX_SERIAL and len(shape) <= 4):
            for d in shape:
                if type(d) is not int or not 0 <= d < MAX_SERIAL:
                    break
            else:
                return h
    raise Dropped("malformed", f"malformed header {str(h)[:200]}")


def array_bytes(t):
    """The raw buffer of a tensor (contiguous, CPU), zero-copy where possible."""
    t = t.detach()
    if t.numel() == 0:
        return memoryview(b"")
    if t.device.type != "cpu":
        t = t.cpu()
    return memoryview(t.contiguous().numpy()).cast("B")


def _checked(buf, dtype: str, shape) -> memoryview:
    """The received buffer, once its dtype is known and its byte count matches dtype and shape."""
    torch_dtype(dtype)
    mv = memoryview(buf)
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if mv.nbytes != expected:
        raise MessageError(f"payload has {mv.nbytes} bytes, expected {expected} for {dtype}{list(shape)}")
    return mv


def ndarray_from(buf, dtype: str, shape) -> np.ndarray:
    """Read-only numpy view over a received buffer (no copy); the data plane's receive path copies it into the
    receiving node's own buffers."""
    return np.frombuffer(_checked(buf, dtype, shape), dtype=NUMPY_DTYPE[dtype]).reshape(shape)


def array_from(buf, dtype: str, shape) -> torch.Tensor:
    """A tensor that owns a copy of a received buffer (control plane, checkpoints)."""
    view = np.frombuffer(_checked(buf, dtype, shape), dtype=NUMPY_DTYPE[dtype]).reshape(shape)
    return torch.from_numpy(view.copy())


def pack_arrays(arrays: dict) -> bytes:
    """{name: tensor|ndarray} -> msgpack bytes {name: [dtype, shape, raw]}."""
    out = {}
    for k, v in arrays.items():
        t = torch.as_tensor(v)
        out[k] = [dtype_name(t), list(t.shape), bytes(array_bytes(t))]
    return msgpack.packb(out)


def unpack_arrays(data: bytes) -> dict:
    """Inverse of pack_arrays; the tensors own their memory."""
    return {k: array_from(raw, dt, shape) for k, (dt, shape, raw) in msgpack.unpackb(data).items()}
