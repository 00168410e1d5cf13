"""Flood measurement (not a CI test): `messages` data-plane messages at one node from an admitted connection that runs
no node, over ZeroMQ, while the fabric runs phases; the receiving host's RSS before and after, the drops by reason,
the sends that found the queue full and waited, and whether the phases still give the clean result.

    python -m experiments.flood [messages]      # default 10**6; target: RSS rise <= 50 MB
"""
from __future__ import annotations

import sys
import threading
import time

import torch

FLOOD_USER = "H9"


def _admit(host, user, token):
    host.transport.admit({user: token})


def _drops(host) -> dict:
    out = {}
    for log in host.logs.values():
        for e in log.drops.export():
            out[e["reason"]] = out.get(e["reason"], 0) + e["count"]
    for e in host.unknown.export() + host.transport.overflow():
        out[e["reason"]] = out.get(e["reason"], 0) + e["count"]
    return out


def flood(messages: int = 10 ** 6, steps: int = 50) -> dict:
    """Flood node L2 of a 3-layer net (one node per host) with `messages` forged messages (claiming L1) from
    FLOOD_USER's admitted connection while phases of `steps` steps run; {rss_before_mb, rss_after_mb, rise_mb, sent,
    blocked, drops, phases, same_result, seconds}."""
    import ray

    from cluster.runtime.coordinator import FabricEngine
    from cluster.runtime.ray_setup import init_ray
    from experiments import bench_raw
    from cluster.messages import encode_header
    from cluster.runtime.transport import TransportError, ZmqTransport, new_token
    from nodes.layered import layered
    from protocols.base import Phase
    model = layered("energy", (4, 5, 3, 2), "sigmoid", dt=0.5)
    own = not ray.is_initialized()
    if own:
        init_ray(num_cpus=2)  # a new local instance, loopback only
    f = FabricEngine(model, "ep-symmetric", dict(granularity="layer", lr=[0.1] * 3, dtype="float64",
                                                 transport="zmq", timeout_s=60.0))
    rogue = ZmqTransport(FLOOD_USER, send_timeout_s=120.0)
    try:
        actor = f.fabric.hosts[f.fabric.placement["L2"]]
        on_host = lambda fn, *a: ray.get(actor.__ray_call__.remote(fn, *a))  # noqa: E731
        g = torch.Generator().manual_seed(0)
        f.set_params(model.init_params(1, torch.float64, 2.0))
        f.set_batch(torch.rand(6, 4, generator=g, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[[0, 1] * 3])
        phase = Phase("free", steps)
        for _ in range(3):  # warm up, then the clean result
            f.run_phase(phase)
        clean = f.output("free")
        token = new_token()
        on_host(_admit, FLOOD_USER, token)
        rogue.connect("L2", f.fabric.addresses["L2"], token)
        pid = on_host(bench_raw.actor_pid)
        before = bench_raw.proc_memory_mb(pid)["vmrss"]
        header = encode_header("L1", "L2", "a", "free", 1 << 40, 0, "float64", [6, 5])
        payload = bytes(240)
        sent = [0]

        def send():
            for _ in range(messages):
                try:
                    rogue.send("L2", header, payload)
                except TransportError:
                    break
                sent[0] += 1

        t0 = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        phases, same = 0, True
        while sender.is_alive() or phases == 0:
            f.run_phase(phase)
            phases += 1
            same &= torch.equal(f.output("free"), clean)
        for _ in range(200):  # drain what the last sends left queued (up to both high-water marks)
            if sum(on_host(_drops).values()) >= sent[0]:
                break
            f.run_phase(phase)
            same &= torch.equal(f.output("free"), clean)
        seconds = time.monotonic() - t0
        after = bench_raw.proc_memory_mb(pid)["vmrss"]
        return {"messages": messages, "sent": sent[0], "blocked": rogue.blocked, "drops": on_host(_drops),
                "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
                "rise_mb": round(after - before, 1), "phases": phases, "same_result": bool(same),
                "seconds": round(seconds, 1)}
    finally:
        rogue.close()
        f.close()
        if own:
            ray.shutdown()


if __name__ == "__main__":
    print(flood(int(sys.argv[1]) if len(sys.argv) > 1 else 10 ** 6))
