"""Wire format: msgpack headers and raw array bytes; never pickle (DESIGN.md "Time and messages").

A data-plane message is two frames: a msgpack header [src, kind, phase, serial, step, dtype, shape] and the
array's raw bytes (C order); an abort is a header of kind "abort" from the coordinator and an empty frame.
Dtypes travel by name, complex ones included. `pack_arrays` encodes a dict of arrays as one msgpack map
{name: [dtype, shape, bytes]} for control-plane calls and checkpoints.
"""
from __future__ import annotations

import math
import warnings

import msgpack
import numpy as np
import torch

warnings.filterwarnings("ignore", message="The given buffer is not writable")

DTYPES = ("float32", "float64", "complex64", "complex128", "int64")
_TORCH = {"float32": torch.float32, "float64": torch.float64,
          "complex64": torch.complex64, "complex128": torch.complex128, "int64": torch.int64}
ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in _TORCH.items()}
NUMPY_DTYPE = {k: np.dtype(k) for k in _TORCH}


class MessageError(RuntimeError):
    """A malformed message: wrong kind, dtype or shape. The text names node, phase and step."""


def dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def torch_dtype(name: str):
    if name not in _TORCH:
        raise MessageError(f"unsupported dtype {name!r}; expected one of {DTYPES}")
    return _TORCH[name]


def encode_header(src: str, kind: str, phase: str, serial: int, step: int, t) -> bytes:
    return msgpack.packb([src, kind, phase, serial, step, dtype_name(t), list(t.shape)])


def encode_abort(src: str, upto: int) -> bytes:
    """The coordinator's abort on the data plane: stop every phase with serial <= upto (no payload)."""
    return msgpack.packb([src, "abort", "", int(upto), -1, "", []])


def decode_header(frame) -> list:
    h = msgpack.unpackb(frame)
    if not (isinstance(h, list) and len(h) == 7):
        raise MessageError(f"malformed header {h!r}")
    return h


def array_bytes(t):
    """The raw buffer of a tensor (contiguous, CPU), zero-copy where possible."""
    t = t.detach()
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
    """Read-only numpy view over a received buffer (no copy); the data plane's receive path."""
    return np.frombuffer(_checked(buf, dtype, shape), dtype=NUMPY_DTYPE[dtype]).reshape(shape)


def array_from(buf, dtype: str, shape) -> torch.Tensor:
    """Tensor view over a received buffer (no copy); the control plane's unpack_arrays."""
    mv = _checked(buf, dtype, shape)
    if mv.nbytes == 0:
        return torch.empty(tuple(shape), dtype=_TORCH[dtype])
    return torch.frombuffer(mv, dtype=_TORCH[dtype]).reshape(tuple(shape))


def pack_arrays(arrays: dict) -> bytes:
    """{name: tensor|ndarray} -> msgpack bytes {name: [dtype, shape, raw]}."""
    out = {}
    for k, v in arrays.items():
        t = torch.as_tensor(v)
        out[k] = [dtype_name(t), list(t.shape), bytes(array_bytes(t))]
    return msgpack.packb(out)


def unpack_arrays(data: bytes) -> dict:
    """Inverse of pack_arrays; the tensors own their memory."""
    return {k: array_from(raw, dt, shape).clone() for k, (dt, shape, raw) in msgpack.unpackb(data).items()}
