"""Raw transport baselines for `bench` (pyzmq between processes, alone or with the layer fabric's products;
a Ray actor call round trip; process memory), and its report (table, plot).

The peer process is this module run as a script (`python -m experiments.bench_raw ROLE ADDR ...`); it imports
only zmq and msgpack, so it starts in a fraction of a second, except the `layer` role, which imports torch for
its products. Messages have the fabric's wire form: two frames, a small msgpack header and the raw payload bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import msgpack
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def header(step: int = 0, batch: int = 128, width: int = 1, dtype: str = "float32") -> bytes:
    """A header like cluster.messages.encode_header's: [src, kind, phase, serial, step, dtype, shape]."""
    return msgpack.packb(["L1.0", "state", "free", 1, step, dtype, [batch, width]])


def _peer(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.bench_raw", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL)


def _bind(sock, wire: str, tmp: str, name: str) -> str:
    """Bind like the fabric's ZmqTransport: an ipc socket in `tmp`, or tcp on loopback; returns the address."""
    if wire == "ipc":
        sock.bind(f"ipc://{tmp}/{name}")
        return f"ipc://{tmp}/{name}"
    return f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"


def zmq_msg_rate(nbytes: int, count: int, timeout_s: float = 60.0, wire: str = "ipc") -> dict:
    """Messages/s from a PUSH in a child process to a PULL here (the fabric's wire), timed first to last."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    tmp = tempfile.mkdtemp(prefix="bench-")
    proc = _peer("push", _bind(pull, wire, tmp, "rate"), count, nbytes)
    try:
        if not pull.poll(int(timeout_s * 1000)):
            raise RuntimeError("bench: raw zmq sender sent nothing")
        pull.recv_multipart(copy=False)
        t0 = time.perf_counter()
        for _ in range(count - 1):
            pull.recv_multipart(copy=False)
        dt = time.perf_counter() - t0
    finally:
        proc.wait(timeout=timeout_s)
        pull.close(0)
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"msgs_per_s": (count - 1) / dt, "count": count, "payload_bytes": nbytes, "wire": wire,
            "header_bytes": len(header()), "seconds": dt}


def _run_peers(peers: dict, timeout_s: float) -> list:
    """Start one peer per {name: args after its address} (each binds ipc://tmp/name), let them connect and
    report ready, send "go" to all, and return the seconds each reports for its timed steps."""
    ctx = zmq.Context()
    tmp = tempfile.mkdtemp(prefix="bench-")
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    parent = _bind(pull, "ipc", tmp, "parent")
    addr = {k: f"ipc://{tmp}/{k}" for k in peers}
    procs = []
    try:
        for k, (role, *args) in peers.items():
            args = [",".join(addr[m] for m in a) if isinstance(a, list) else a for a in args]
            procs.append(_peer(role, addr[k], parent, *args))
        for _ in peers:  # every child bound and connected
            if not pull.poll(int(timeout_s * 1000)):
                raise RuntimeError("bench: raw exchange peers did not start")
            pull.recv()
        push = {}
        for k in peers:
            push[k] = ctx.socket(zmq.PUSH)
            push[k].setsockopt(zmq.LINGER, 0)
            push[k].connect(addr[k])
        for s in push.values():
            s.send_multipart([b"go", b""])
        seconds = []
        for _ in peers:
            if not pull.poll(int(timeout_s * 1000)):
                raise RuntimeError("bench: raw exchange did not finish")
            seconds.append(float(pull.recv()))
        for s in push.values():
            s.close(0)
    finally:
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        pull.close(0)
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return seconds


def zmq_exchange_rate(n1: int, n2: int, nbytes: int, steps: int, timeout_s: float = 120.0) -> dict:
    """The neuron fabric's pattern in plain pyzmq: n1 + n2 processes, each of the first n1 linked to each of the
    other n2; every step each process sends one message (header + nbytes) to every neighbour and waits for
    theirs, over ipc; 3 warm-up steps, then `steps` timed. No Ray, no torch, no checks: the wire's own cost
    for this synchronous pattern on these cores."""
    names = [f"a{i}" for i in range(n1)] + [f"b{j}" for j in range(n2)]
    seconds = _run_peers({k: ("node", steps, nbytes, [m for m in names if m[0] != k[0]]) for k in names}, timeout_s)
    msgs = 2 * n1 * n2 * steps
    return {"processes": n1 + n2, "msgs_per_step": 2 * n1 * n2, "steps": steps, "payload_bytes": nbytes,
            "wire": "ipc", "step_us": max(seconds) / steps * 1e6, "msgs_per_s": msgs / max(seconds)}


def zmq_exchange_hosts(links: dict, nbytes: int, steps: int, msgs_per_step: int, timeout_s: float = 120.0) -> dict:
    """A hosted neuron fabric's pattern in plain pyzmq: one process per host, every step each sends one frame of
    `nbytes` (the fabric's mean frame) to each host in links[host] and waits for theirs, over ipc. msgs_per_s counts
    the logical messages those frames carry (`msgs_per_step`, the fabric's), so it compares with the fabric's."""
    seconds = _run_peers({h: ("node", steps, nbytes, list(peers)) for h, peers in links.items()}, timeout_s)
    return {"processes": len(links), "frames_per_step": sum(map(len, links.values())), "steps": steps,
            "payload_bytes": nbytes, "wire": "ipc", "step_us": max(seconds) / steps * 1e6,
            "msgs_per_s": msgs_per_step * steps / max(seconds)}


def layer_exchange_step(sizes: list, batch: int, dtype: str, steps: int, timeout_s: float = 120.0) -> dict:
    """The layer fabric's step in plain pyzmq and torch: one process per layer 1..N (one torch thread each),
    every step each sends its (batch, width) state to layers n-1 and n+1, waits for theirs over ipc, and
    computes the prototypical step s_n <- sigmoid(c_n + 4 (s_{n-1} W_{n-1}^T + s_{n+1} W_n)), the same products
    as the fabric's node. No Ray, no checks, no logs: the floor of the layer fabric's step on these cores."""
    N = len(sizes) - 1
    spec = {"sizes": list(sizes), "batch": batch, "dtype": dtype}
    peers = {f"L{n}": ("layer", steps, json.dumps({**spec, "n": n}), [f"L{m}" for m in (n - 1, n + 1) if 1 <= m <= N])
             for n in range(1, N + 1)}
    seconds = _run_peers(peers, timeout_s)
    return {"processes": N, "sizes": list(sizes), "batch": batch, "dtype": dtype, "steps": steps, "wire": "ipc",
            "step_us": max(seconds) / steps * 1e6}


def zmq_round_trip(nbytes: int, iters: int, timeout_s: float = 60.0, wire: str = "ipc") -> dict:
    """Ping-pong (REQ here, REP echo in a child process, the fabric's wire): median round trip in µs."""
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    tmp = tempfile.mkdtemp(prefix="bench-")
    proc = _peer("echo", _bind(req, wire, tmp, "rt"), iters + 10)
    payload = bytes(nbytes)
    times = []
    try:
        for i in range(iters + 10):
            t0 = time.perf_counter()
            req.send_multipart([header(i), payload], copy=nbytes < 65536)
            if not req.poll(int(timeout_s * 1000)):
                raise RuntimeError("bench: raw zmq echo did not answer")
            req.recv_multipart(copy=False)
            if i >= 10:
                times.append(time.perf_counter() - t0)
    finally:
        proc.wait(timeout=timeout_s)
        req.close(0)
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"median_us": statistics.median(times) * 1e6, "iters": iters, "payload_bytes": nbytes, "wire": wire}


def _echo(_self, h, p):
    """Run on an actor through `__ray_call__` (no method added to the actor class)."""
    return h, p


def actor_pid(_self):
    return os.getpid()


def ray_round_trip(handle, nbytes: int, iters: int) -> dict:
    """Median round trip of `ray.get(actor.__ray_call__.remote(echo, header, payload))` in µs."""
    import ray
    payload = bytes(nbytes)
    times = []
    for i in range(iters + 5):
        t0 = time.perf_counter()
        ray.get(handle.__ray_call__.remote(_echo, header(i), payload))
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return {"median_us": statistics.median(times) * 1e6, "iters": iters, "payload_bytes": nbytes}


def proc_memory_mb(pid: int) -> dict:
    """VmRSS (resident, shared pages counted in full) and Pss (shared pages split) of a process, in MB."""
    out = {}
    for path, key in ((f"/proc/{pid}/status", "VmRSS"), (f"/proc/{pid}/smaps_rollup", "Pss")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        out[key.lower()] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def used_memory_mb() -> float:
    """MemTotal - MemAvailable from /proc/meminfo, in MB."""
    with open("/proc/meminfo") as f:
        d = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return (d["MemTotal"] - d["MemAvailable"]) / 1024


def table(out) -> str:
    lines = [f"{'ratio':32s} {'value':>10s} {'target':>10s}  met"]
    for k, v in out["ratios"].items():
        t = out["targets"][k]
        target = t["op"] + " " + format(t["value"], "g") if t else "-"
        met = "-" if out["met"][k] is None else "yes" if out["met"][k] else "NO"
        lines.append(f"{k:32s} {v:10.3g} {target:>10s}  {met}")
    lines += ["", f"{'layer net':22s} {'B':>5s} {'dtype':8s} {'in-proc µs':>11s} {'fabric µs':>10s} {'ratio':>6s} "
                  f"{'raw same-pattern µs':>20s}"]
    for r in out["layer"]:
        raw = f"{r['raw_same_pattern_step_us']:20.0f}" if "raw_same_pattern_step_us" in r else ""
        lines.append(f"{'-'.join(map(str, r['sizes'])):22s} {r['batch']:5d} {r['dtype']:8s} "
                     f"{r['inprocess_step_us']:11.0f} {r['fabric_step_us']:10.0f} {r['ratio']:6.2f} {raw}")
    lines += ["", f"{'neuron nodes':>12s} {'actors':>6s} {'start s':>8s} {'ms/step':>8s} {'msgs/step':>10s} "
                  f"{'msgs/s':>9s} {'raw same-pattern ms/step':>25s}"]
    for r in out["neuron"]:
        if "error" in r:
            lines.append(f"{r['nodes']:12d}  failed: {r['error'][:60]}")
        else:
            raw = f"{r['raw_same_pattern']['step_us'] / 1e3:25.2f}" if "raw_same_pattern" in r else ""
            lines.append(f"{r['nodes']:12d} {r['actors']:6d} {r['fabric_start_s']:8.1f} {r['step_us'] / 1e3:8.2f} "
                         f"{r['msgs_per_step']:10.0f} {r['msgs_per_s']:9.0f} {raw}")
    lines += [f"{k} = {v:.3g}" for k, v in out.get("diagnostics", {}).items() if isinstance(v, (int, float))]
    lines.append(f"raw zmq ({out['raw_zmq']['wire']}) {out['raw_zmq']['msgs_per_s']:.0f} msgs/s; round trip zmq "
                 + ", ".join(f"{r['median_us']:.0f} µs ({r['payload_bytes']} B)" for r in out["zmq_round_trip"])
                 + "; ray " + ", ".join(f"{r['median_us']:.0f} µs ({r['payload_bytes']} B)"
                                        for r in out["ray_transport"]["ray_round_trip"]))
    if out.get("rss_mb_per_actor"):
        lines.append(f"RSS per neuron-fabric actor {out['rss_mb_per_actor']:.0f} MB")
    if "hosted_neuron" in out:
        h = out["hosted_neuron"]
        lines += ["", f"hosted {'-'.join(map(str, h['sizes']))} (batch {h['batch']}, T1 {h['T1']}, T2 {h['T2']}): "
                      f"{h['note']}", f"{'fabric':>16s} {'nodes':>6s} {'s/batch':>8s} {'epoch s':>8s} "
                                      f"{'x layer':>8s} {'RSS GB':>7s} {'msgs/s':>9s}"]
        for r in [h["layer"], *h["neuron"]]:
            name = "layer" if r["granularity"] == "layer" else f"neuron, {r['hosts']} hosts"
            lines.append(f"{name:>16s} {r['nodes']:6d} {r['batch_s']:8.3f} {r['epoch_s_extrapolated']:8.1f} "
                         f"{r.get('epoch_over_layer_epoch', 1.0):8.1f} {r['rss_gb']:7.2f} {r['msgs_per_s']:9.0f}")
        s = out["nodes_scaling"]
        lines.append("step time against logical nodes: " + ", ".join(
            f"{r['nodes']}: {r['step_s'] * 1e3:.1f} ms" for r in s["rows"]) + f"; log-log slope {s['slope']:.2f}")
    return "\n".join(lines)


def plot(out, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    row = next(r for r in out["layer"] if r["sizes"] == out["main"]["sizes"] and r["batch"] == out["main"]["batch"]
               and r["dtype"] == out["main"]["dtype"])
    big = max((r for r in out["neuron"] if "error" not in r), key=lambda r: r["nodes"])
    bars = {"matmuls alone": out["matmul_step_us"], "in-process": row["inprocess_step_us"],
            "layer pattern, raw pyzmq + torch": row["raw_same_pattern_step_us"],
            "layer fabric zmq": row["fabric_step_us"], "layer fabric ray": out["ray_transport"]["step_us"],
            f"neuron fabric ({big['nodes']} nodes on {big['actors']} actors, {'-'.join(map(str, big['sizes']))})":
                big["step_us"]}
    if "cuda" in out:
        bars["in-process cuda, CUDA graphs"] = out["cuda"]["step_us"]
        bars["in-process cuda, eager"] = out["cuda"]["eager_step_us"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    a1.barh(list(bars), list(bars.values()), color="tab:blue")
    a1.set_xscale("log")
    for i, v in enumerate(bars.values()):
        a1.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    a1.set_xlabel("µs per step (median)")
    a1.set_title(f"one step, {'-'.join(map(str, row['sizes']))}, B={row['batch']}, {row['dtype']}")
    keys = [k for k in out["ratios"] if out["targets"][k]]  # those with a target on this machine
    vals = [out["ratios"][k] for k in keys]
    a2.barh(keys, vals, color=["tab:green" if out["met"][k] else "tab:red" for k in keys])
    a2.scatter([out["targets"][k]["value"] for k in keys], keys, marker="|", s=400, color="black", label="target")
    a2.set_xscale("log")
    for i, v in enumerate(vals):
        a2.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    a2.set_title("ratios (green: target met)" + (" [quick]" if out["quick"] else ""))
    a2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv) -> None:
    role, addr = argv[0], argv[1]
    ctx = zmq.Context()
    if role == "push":
        count, nbytes = int(argv[2]), int(argv[3])
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, -1)
        sock.connect(addr)
        payload = bytes(nbytes)
        for i in range(count):
            sock.send_multipart([header(i), payload])
    elif role in ("node", "layer"):  # zmq_exchange_rate's and layer_exchange_step's peers
        parent_addr, steps, nbrs = argv[2], int(argv[3]), argv[-1].split(",")
        sock = ctx.socket(zmq.PULL)
        sock.bind(addr)
        out = [ctx.socket(zmq.PUSH) for _ in nbrs]
        for s, a in zip(out, nbrs):
            s.connect(a)
        report = ctx.socket(zmq.PUSH)
        report.connect(parent_addr)
        if role == "node":
            payload, hdr, compute = bytes(int(argv[4])), header, None
        else:
            payload, hdr, compute = _layer_step(json.loads(argv[4]), addr, nbrs)
        report.send(b"ready")
        early = {}
        while True:  # "go" from the parent; a faster neighbour's first messages may come before it
            frames = sock.recv_multipart(copy=False)
            if frames[0].bytes == b"go":
                break
            t = msgpack.unpackb(frames[0].bytes)[4]
            early.setdefault(t, []).append(frames)
        warm = 3  # first steps (connections being made) untimed
        for step in range(warm + steps):
            if step == warm:
                t0 = time.perf_counter()
            h = hdr(step)
            for s in out:
                s.send_multipart([h, payload])
            got = early.pop(step, [])
            while len(got) < len(nbrs):
                frames = sock.recv_multipart(copy=False)
                t = msgpack.unpackb(frames[0].bytes)[4]
                if t == step:
                    got.append(frames)
                else:
                    early.setdefault(t, []).append(frames)
            if compute is not None:
                payload = compute(got)
        report.send(str(time.perf_counter() - t0).encode())
        for s in (*out, report):
            s.close(-1)
    elif role == "echo":
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, -1)
        sock.connect(addr)
        for _ in range(int(argv[2])):
            sock.send_multipart(sock.recv_multipart(copy=False), copy=False)
    sock.close()
    ctx.term()


def _layer_step(spec: dict, addr: str, nbrs: list) -> tuple:
    """(first payload, header(step), compute(frames) -> next payload) for layer n of a `layer` peer; the
    neighbours' messages are told apart by their header's src (the sender's address)."""
    import torch
    torch.set_num_threads(1)
    sizes, n, B = spec["sizes"], spec["n"], spec["batch"]
    dt = getattr(torch, spec["dtype"])
    gen = torch.Generator().manual_seed(n)
    w = sizes[n]
    W_in = torch.rand(w, sizes[n - 1], generator=gen, dtype=dt) * 0.01  # W_{n-1}
    W_out = torch.rand(sizes[n + 1], w, generator=gen, dtype=dt) * 0.01 if n < len(sizes) - 1 else None  # W_n
    c = torch.rand(B, w, generator=gen, dtype=dt)  # the clamped drive (W_0 x + b_0 for layer 1, b_{n-1} else)
    pre = [a for a in nbrs if a.endswith(f"/L{n - 1}")]
    post = [a for a in nbrs if a.endswith(f"/L{n + 1}")]
    bufs = {a: torch.empty(B, sizes[n - 1 if a in pre else n + 1], dtype=dt) for a in nbrs}
    s = torch.zeros(B, w, dtype=dt)

    def hdr(step):
        return msgpack.packb([addr, "state", "free", 1, step, spec["dtype"], [B, w]])

    def compute(got):
        for frames in got:
            src = msgpack.unpackb(frames[0].bytes)[0]
            bufs[src].numpy().reshape(-1)[:] = torch.frombuffer(frames[1].buffer, dtype=dt).numpy()
        u = c.clone()
        for a in pre:
            u.addmm_(bufs[a], W_in.T, alpha=4.0)
        for a in post:
            u.addmm_(bufs[a], W_out, alpha=4.0)
        nonlocal s
        s = torch.sigmoid_(u)
        return memoryview(s.numpy()).cast("B")

    return memoryview(s.numpy()).cast("B"), hdr, compute


if __name__ == "__main__":
    main(sys.argv[1:])
