"""Wire format (msgpack header + raw bytes, complex dtypes), connection identity, and the in-port checks a message
passes before it reaches a node's arithmetic."""
import time

import msgpack
import numpy as np
import pytest
import torch

from cluster.runtime.message_log import MessageLog
from cluster.messages import (Dropped, MessageError, array_bytes, array_from, decode_header, encode_header,
                              pack_arrays, unpack_arrays)
from cluster.runtime.ports import MAX_AHEAD, NodeInbox
from cluster.runtime.transport import LocalTransport, TransportError, ZmqTransport, new_token
from nodes.layered import layered


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_arrays_round_trip_as_plain_msgpack_of_dtype_shape_and_raw_bytes(dtype):
    t = torch.randn(3, 4, dtype=dtype)
    packed = pack_arrays({"a": t, "b": t[:1]})
    plain = msgpack.unpackb(packed, ext_hook=lambda code, data: pytest.fail(f"msgpack extension type {code}"))
    assert plain == {"a": [str(dtype)[6:], [3, 4], t.numpy().tobytes()], "b": [str(dtype)[6:], [1, 4],
                                                                              t[:1].numpy().tobytes()]}
    out = unpack_arrays(packed)
    assert torch.equal(out["a"], t) and out["a"].dtype == dtype and torch.equal(out["b"], t[:1])
    out["a"].add_(1)  # the tensors own writable memory
    assert not torch.equal(out["a"], t)


def test_payload_length_mismatch_is_an_error():
    buf = bytes(array_bytes(torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(MessageError, match="payload has 24 bytes, expected 32"):
        array_from(buf, "float64", [4])


@pytest.mark.parametrize("frame,reason", [
    (b"\x93\x01", "undecodable"), (b"random bytes \xff\xfe", "undecodable"),
    (msgpack.packb(["L" * 300, "L2", "a", "free", 1, 0, "float64", [2, 3]]), "undecodable"),  # a string too long
    (msgpack.packb({"src": "L1"}), "undecodable"), (msgpack.packb([b"L1"] * 8), "undecodable"),  # a map, bins
    (b"\x98" + b"\xa1a" * 2000, "undecodable"),  # over MAX_HEADER_BYTES
    (msgpack.packb(["L1", "L2"]), "malformed"),
    (msgpack.packb(["L1", "L2", "a", "free", "1", 0, "float64", [2, 3]]), "malformed"),
    (msgpack.packb(["L1", "L2", "a", "free", 1, 0, "float64", [-2, 3]]), "malformed"),
    (msgpack.packb(["L1", "L2", "a", "free", 2 ** 63, 0, "float64", [2, 3]]), "malformed"),
    (msgpack.packb(["L1", "L2", "a", "free", True, 0, "float64", [2, 3]]), "malformed")])
def test_malformed_headers_are_dropped_by_name(frame, reason):
    with pytest.raises(Dropped, match="header") as err:
        decode_header(frame)
    assert err.value.reason == reason


def test_zmq_identity_comes_from_the_connection_and_bad_credentials_are_refused():
    rx, good = ZmqTransport("H2"), ZmqTransport("H1")
    bad, anon = ZmqTransport("H3", send_timeout_s=0.5), ZmqTransport("H4", send_timeout_s=0.5)
    try:
        token = new_token()
        rx.admit({"H1": token, "H3": new_token()})
        good.connect("H2", rx.address, token)
        bad.connect("H2", rx.address, "not-the-token")  # a known user with the wrong credential
        anon.connect("H2", rx.address, token)          # someone else's credential under its own name
        header = encode_header("L1", "L2", "a", "free", 1, 0, "float64", [1, 1])
        for t in (good, bad, anon):
            try:  # queued while the handshake is under way; once it is refused there is no connection to take it
                t.send("H2", header, bytes(8))
            except TransportError as err:
                assert t is not good and "no connection to H2" in str(err)
        got = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (len(rx.refused()) < 2 or not got):
            m = rx.recv(0.1)
            if m:
                got.append(m[0])
        assert got == ["H1"]  # only the admitted connection delivered, and the user is its authenticated name
        assert sorted(r["user"] for r in rx.refused()) == ["H3", "H4"]
    finally:
        for t in (rx, good, bad, anon):
            t.close()


def test_curve_admits_only_the_issued_keys_and_counts_the_rest():
    """fabric.curve: the receiver knows a sender by the public half of the secret key it was issued; a valid CURVE
    key it was not issued, and a peer speaking PLAIN, are refused and counted, and deliver nothing."""
    rx = ZmqTransport("H2", curve=True)
    good, bad, plain = (ZmqTransport(n, send_timeout_s=0.5) for n in ("H1", "H3", "H4"))
    try:
        token = new_token(curve=True)
        rx.admit({"H1": token})
        assert rx.endpoint == (rx.address, rx.server_key) and len(rx.server_key) == 40
        good.connect("H2", rx.endpoint, token)
        bad.connect("H2", rx.endpoint, new_token(curve=True))  # a CURVE key of its own
        plain.connect("H2", rx.address, new_token())            # no CURVE at all
        header = encode_header("L1", "L2", "a", "free", 1, 0, "float64", [1, 1])
        for t in (good, bad, plain):
            try:
                t.send("H2", header, bytes(8))
            except TransportError:
                assert t is not good
        got, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline and (len(rx.refused()) < 2 or not got):
            m = rx.recv(0.1)
            if m:
                got.append(m[0])
        assert got == ["H1"]
        assert sorted(r["mechanism"] for r in rx.refused()) == ["CURVE", "handshake"]
    finally:
        for t in (rx, good, bad, plain):
            t.close()


def test_a_send_with_no_connection_to_take_it_is_a_named_error_not_a_hang():
    lonely = ZmqTransport("H5", send_timeout_s=0.3)
    try:
        lonely.push["H2"] = lonely.push_socket()  # no connection at all, as once a refused handshake is torn down
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="H5: no connection to H2 took a message within 0.3 s"):
            lonely.send("H2", encode_header("L1", "L2", "a", "free", 1, 0, "float64", [1, 1]), bytes(8))
        assert 0.25 <= time.monotonic() - t0 < 3
    finally:
        lonely.close()


def test_token_transports_map_tokens_to_users_and_refuse_unknown_ones():
    rx, tx = LocalTransport("H2"), LocalTransport("H1")
    token = new_token()
    rx.admit({"H1": token})
    tx.connect("H2", rx.address, token)
    tx.send("H2", b"h", b"p")
    rx.deliver("forged", b"h", b"p")
    assert rx.recv(1.0) == ("H1", b"h", b"p") and rx.recv(0.01) is None
    assert rx.refused() == [{"user": "", "mechanism": "token", "address": "", "count": 1}]
    rx.close(), tx.close()


def inbox():
    m = layered("energy", (4, 5, 3, 2), "sigmoid", 0.5)
    return NodeInbox(m.node_specs(m.partition("layer"))["L2"], MessageLog())  # ports L1 -> L2 (5 wide), L3 -> L2 (2)


def msg(width, B=4, dtype=np.float64, value=0.0):
    return np.full((B, width), value, dtype=dtype)


def drops(box) -> dict:
    return {(e["user"], e["reason"]): e["count"] for e in box.log.drops.export()}


def test_inbox_assembles_a_complete_step_and_checks_batch_dtype_and_width():
    box = inbox()
    box.start(1, "free", 5, (), "float64", 4)
    box.accept("L1", "a", "free", 1, 0, "float64", [4, 5], msg(5, value=1.0))
    assert not box.complete(1, 0) and box.missing(1, 0) == ["L3"]
    box.accept("L3", "a", "free", 1, 0, "float64", [4, 2], msg(2, value=3.0))
    assert box.complete(1, 0)
    got = box.take(1, 0, "free", 4, torch.float64, own={"a": torch.zeros(4, 3, dtype=torch.float64)})
    assert torch.equal(got["L1.a"], torch.ones(4, 5, dtype=torch.float64)) and got["L3.a"].eq(3).all()
    for shape, dtype, reason, what in (
            ([1, 5], "float64", "shape", r"float64\[1, 5\], expected float64\[4, 5\]"),
            ([4, 5], "float32", "dtype", r"dtype 'float32', expected one of \['float64'\]"),
            ([4, 4], "float64", "shape", r"float64\[4, 4\], expected \[rows, 5\]")):
        payload = bytes(msg(shape[1], B=shape[0], dtype=np.dtype(dtype)))
        with pytest.raises(Dropped, match=r"node L2, phase free, step 1, message from L1: " + what) as err:
            box.accept("L1", "a", "free", 1, 1, dtype, shape, payload)  # within the host: raised
        assert err.value.reason == reason
        assert not box.accept("L1", "a", "free", 1, 1, dtype, shape, payload, user="H1")  # from the wire: dropped
        assert drops(box)[("H1", reason)] >= 1 and not box.buffer
    # the next phase's messages are checked for what is known (width, the run's dtypes) at once, the rest at start
    assert box.accept("L1", "a", "plus", 2, 0, "float64", [1, 5], bytes(msg(5, B=1)), user="H1")
    assert box.accept("L3", "a", "plus", 2, 0, "complex128", [4, 2], bytes(msg(2, dtype=np.complex128)), user="H3")
    assert not box.accept("L3", "a", "plus", 2, 1, "int64", [4, 2], bytes(msg(2, dtype=np.int64)), user="H3")
    box.start(2, "plus", 5, (), "float64", 4)
    assert not box.buffer and drops(box)[("H1", "shape")] == 3 and drops(box)[("H3", "dtype")] == 2


def test_inbox_drops_duplicates_replays_floods_and_future_and_counts_stale_phases():
    box = inbox()
    box.start(5, "free", 20, (), "float64", 4)
    wire = dict(user="H1")
    assert box.accept("L1", "a", "free", 5, 0, "float64", [4, 5], bytes(msg(5)), **wire)
    assert not box.accept("L1", "a", "free", 5, 0, "float64", [4, 5], bytes(msg(5)), **wire)
    with pytest.raises(Dropped, match="node L2, phase free, step 0, message from L1: serial 5, step 0 is already"):
        box.accept("L1", "a", "free", 5, 0, "float64", [4, 5], msg(5))
    assert not box.accept("L1", "a", "free", 4, 0, "float64", [4, 5], bytes(msg(5)), **wire)  # an aborted phase's
    assert not box.accept("L1", "a", "free", 7, 0, "float64", [4, 5], bytes(msg(5)), **wire)  # two phases ahead
    assert not box.accept("L1", "a", "free", 5, MAX_AHEAD, "float64", [4, 5], bytes(msg(5)), **wire)  # too far
    assert not box.accept("L1", "a", "free", 5, 21, "float64", [4, 5], bytes(msg(5)), **wire)  # past the phase
    for t in range(1, MAX_AHEAD):
        assert box.accept("L1", "a", "free", 5, t, "float64", [4, 5], bytes(msg(5)), **wire)
    assert not box.accept("L1", "a", "plus", 6, 0, "float64", [4, 5], bytes(msg(5)), **wire)  # MAX_AHEAD held
    assert not box.accept("L1", "a", "free", 5, 1, "float64", [4, 5], bytes(8), **wire)  # bytes: duplicate first
    assert not box.accept("L3", "a", "free", 5, 0, "float64", [4, 2], bytes(8), user="H3")
    assert not box.accept("L3", "a", "plus", 5, 0, "float64", [4, 2], bytes(msg(2)), user="H3")  # not serial 5's
    assert not box.accept("L9", "a", "free", 5, 0, "float64", [4, 2], bytes(msg(2)), user="H3")
    assert box.accept("L3", "a", "free", 5, 0, "float64", [4, 2], bytes(msg(2)), user="H3")
    box.take(5, 0, "free", 4, torch.float64, own={"a": torch.zeros(4, 3, dtype=torch.float64)})
    assert not box.accept("L3", "a", "free", 5, 0, "float64", [4, 2], bytes(msg(2)), user="H3")  # delivered
    assert drops(box) == {("H1", "duplicate"): 2, ("H1", "stale"): 1, ("H1", "future"): 3, ("H1", "full"): 1,
                          ("H3", "size"): 1, ("H3", "phase"): 1, ("H3", "not_a_port"): 1, ("H3", "replayed"): 1}
    box.start(6, "free", 20, (), "float64", 4)  # what step 0 left of serial 5 is an aborted phase's now: stale
    assert not box.buffer and drops(box)[("H1", "stale")] == 1 + MAX_AHEAD - 1
    counted = {(src, kind, phase): n for src, _, kind, phase, n, _ in box.log.export()["counters"]}
    assert counted == {("L1", "a", "free"): MAX_AHEAD, ("L3", "a", "free"): 1}  # only what was accepted


def test_ipc_wire_with_a_cluster_host_is_a_config_error():
    from experiments.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="fabric.wire: ipc reaches one machine only"):
        load_config("train", ["fabric.wire=ipc", "fabric.host=0.0.0.0"])
    assert load_config("train", ["fabric.wire=tcp", "fabric.host=0.0.0.0"]).fabric.wire == "tcp"


@pytest.mark.parametrize("wire", ["ipc", "tcp"])
def test_zmq_wires_deliver(wire):
    a, b = ZmqTransport("a", wire=wire), ZmqTransport("b", wire=wire)
    try:
        assert a.address.startswith(f"{wire}://")
        token = new_token()
        b.admit({"a": token})
        a.connect("b", b.address, token)
        a.send("b", b"header", b"payload")
        user, h, p = b.recv(5.0)
        assert user == "a" and h == b"header" and bytes(p) == b"payload"
    finally:
        a.close(), b.close()
