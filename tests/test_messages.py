"""Wire format: msgpack header + raw bytes, complex dtypes, schema checks, timeouts that name the step."""
import pytest
import torch

from cluster.channel import LocalityError, NodeChannel, PhaseError
from cluster.message_log import MessageLog
from cluster.messages import MessageError, array_bytes, array_from, pack_arrays, unpack_arrays
from cluster.transport import LocalTransport, ZmqTransport


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_arrays_round_trip_without_pickle(dtype):
    t = torch.randn(3, 4, dtype=dtype)
    packed = pack_arrays({"a": t, "b": t[:1]})
    assert b"pickle" not in packed and isinstance(packed, bytes)
    out = unpack_arrays(packed)
    assert torch.equal(out["a"], t) and out["a"].dtype == dtype and torch.equal(out["b"], t[:1])


def test_payload_length_mismatch_is_an_error():
    buf = bytes(array_bytes(torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(MessageError, match="payload has 24 bytes, expected 32"):
        array_from(buf, "float64", [4])


def _pair(kind="local"):
    T = LocalTransport if kind == "local" else ZmqTransport
    ta, tb = T(), T()
    a = NodeChannel("L1", ta, {"L2": 3}, "float64", MessageLog("full"), timeout_s=0.3)
    b = NodeChannel("L2", tb, {"L1": 2}, "float64", MessageLog("full"), timeout_s=0.3)
    a.connect({"L2": tb.address})
    b.connect({"L1": ta.address})
    return a, b


@pytest.mark.parametrize("kind", ["local", "zmq"])
def test_channel_delivers_by_step_and_logs(kind):
    a, b = _pair(kind)
    try:
        for t in range(3):  # sender runs ahead; the receiver buffers by step
            a.broadcast("free", 1, t, torch.full((5, 2), float(t), dtype=torch.float64))
        for t in range(3):
            got = b.gather("free", 1, t, ["L1"])
            assert torch.equal(torch.from_numpy(got["L1"].copy()), torch.full((5, 2), float(t), dtype=torch.float64))
        assert [r[:5] for r in b.log.records] == [("L1", "L2", "state", "free", t) for t in range(3)]
    finally:
        a.close(), b.close()


def test_send_to_non_neighbour_raises():
    a, b = _pair()
    with pytest.raises(LocalityError, match="L3.*not a graph neighbour"):
        a.send("L3", "state", "free", 1, 0, torch.zeros(1, 2, dtype=torch.float64))
    with pytest.raises(LocalityError, match="not a graph neighbour"):
        a.connect({"L3": "local:0"})


def test_wrong_shape_or_dtype_names_node_phase_step():
    a, b = _pair()
    a.broadcast("nudged", 1, 4, torch.zeros(5, 7, dtype=torch.float64))
    with pytest.raises(MessageError, match=r"node L2, phase nudged, step 4.*shape \[5, 7\]"):
        b.gather("nudged", 1, 4, ["L1"])
    a.broadcast("nudged", 1, 5, torch.zeros(5, 2, dtype=torch.float32))
    with pytest.raises(MessageError, match="node L2, phase nudged, step 5.*dtype float32"):
        b.gather("nudged", 1, 5, ["L1"])


def test_missing_neighbour_times_out_with_a_message():
    a, b = _pair()
    with pytest.raises(PhaseError, match=r"node L2, phase free, step 3: no message from \['L1'\]"):
        b.gather("free", 1, 3, ["L1"])


def test_ipc_wire_with_a_cluster_host_is_a_config_error():
    from experiments.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="fabric.wire: ipc reaches one machine only"):
        load_config("train", ["fabric.wire=ipc", "fabric.host=0.0.0.0"])
    assert load_config("train", ["fabric.wire=tcp", "fabric.host=0.0.0.0"]).fabric.wire == "tcp"


@pytest.mark.parametrize("wire", ["ipc", "tcp"])
def test_zmq_wires_deliver(wire):
    a, b = ZmqTransport(wire=wire), ZmqTransport(wire=wire)
    try:
        assert a.address.startswith(f"{wire}://")
        a.connect("b", b.address)
        a.send("b", b"header", b"payload")
        h, p = b.recv(5.0)
        assert h == b"header" and bytes(p) == b"payload"
    finally:
        a.close(), b.close()
