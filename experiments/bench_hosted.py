"""bench's neuron fabrics: `neuron` (n logical nodes, an actor each or on hosts, against the same pattern in bare
pyzmq) and `hosted_neuron` (docs/families/neuron-scale.md): the P-MLP net at neuron granularity, many logical nodes
per host actor.

`hosted_neuron` trains the net (784-512-10: 522 logical nodes, 10,240 directed neuron edges) on `fabric.hosts`
∈ {1, 2, 4} and at layer granularity in the same run: seconds per training batch (T1, T2 of the recipe), an
mnist5k epoch extrapolated from the timed batches (4,000 training samples: 80 batches of 50; the data are random
of the same shape, which costs the same), total RSS of the host actors and the driver, messages per second.
`nodes_scaling` times a free phase against the number of logical nodes (784-n-10) and fits the log-log slope.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time

import torch

from cluster.launch import DTYPES
from experiments import bench_raw
from experiments.bench_parts import PUBLISHED, _batch, _engine, log, process_budget, state_messages
from protocols.base import Phase

MNIST5K_TRAIN = 4000


def _rss_gb(fab) -> float:
    """VmRSS of every host actor of a fabric and of this driver, in GB (/proc; pids from the actors)."""
    import ray
    pids = ray.get([h.__ray_call__.remote(bench_raw.actor_pid) for h in fab.fabric.hosts.values()], timeout=60)
    return sum(bench_raw.proc_memory_mb(p).get("vmrss", 0.0) for p in [*pids, os.getpid()]) / 1024


def _train(cfg, granularity: str, hosts: int, batches: int) -> dict:
    """One warm-up batch, then `batches` timed training batches of the recipe's program."""
    fab_cfg = dataclasses.replace(cfg.fabric, hosts=hosts, timeout_s=max(cfg.fabric.timeout_s, 600.0))
    c, eng = _engine(cfg, engine="fabric", granularity=granularity, transport="zmq", fabric=fab_cfg)
    try:
        x, y = _batch(c, c.sizes, c.batch, DTYPES[c.dtype])
        t0 = time.perf_counter()
        eng.train_batch(x, y, c.beta, c.T1, c.T2)
        first = time.perf_counter() - t0
        eng.message_logs(clear=True)
        times = []
        for _ in range(batches):
            t0 = time.perf_counter()
            eng.train_batch(x, y, c.beta, c.T1, c.T2)
            times.append(time.perf_counter() - t0)
        msgs = state_messages(eng.message_logs(clear=True))
        rss = _rss_gb(eng)
        per_batch = statistics.median(times)
        n_batches = math.ceil(MNIST5K_TRAIN / c.batch)
        return {"granularity": granularity, "hosts": hosts, "nodes": len(eng.specs), "actors": len(eng.fabric.hosts),
                "fabric_start_s": eng.fabric.start_s, "first_batch_s": first, "batch_s": per_batch,
                "epoch_s_extrapolated": per_batch * n_batches, "epoch_batches": n_batches, "timed_batches": batches,
                "msgs_per_s": msgs / sum(times), "rss_gb": rss, "bytes_per_node": rss * 2 ** 30 / len(eng.specs)}
    finally:
        eng.close()


def hosted_neuron(cfg, hosts_list, batches: int) -> dict:
    """The net of cfg at neuron granularity on each host count, and at layer granularity, in one run."""
    layer = _train(cfg, "layer", 0, batches)
    log(f"hosted: layer fabric {layer['batch_s'] * 1e3:.0f} ms/batch, epoch ~{layer['epoch_s_extrapolated']:.1f} s")
    rows = []
    for k in hosts_list:
        r = _train(cfg, "neuron", k, batches)
        r["epoch_over_layer_epoch"] = r["epoch_s_extrapolated"] / layer["epoch_s_extrapolated"]
        log(f"hosted: {r['nodes']} neuron nodes on {k} hosts: {r['batch_s']:.2f} s/batch, epoch "
            f"~{r['epoch_s_extrapolated']:.0f} s ({r['epoch_over_layer_epoch']:.0f}x layer), RSS {r['rss_gb']:.2f} GB, "
            f"{r['msgs_per_s']:.0f} msgs/s")
        rows.append(r)
    return {"sizes": list(cfg.sizes), "batch": cfg.batch, "T1": cfg.T1, "T2": cfg.T2, "layer": layer,
            "neuron": rows, "note": f"epoch = median batch time x {layer['epoch_batches']} batches (mnist5k's "
                                    f"{MNIST5K_TRAIN} training samples), extrapolated from {batches} timed batches"}


def nodes_scaling(cfg, hidden: list, hosts: int, steps: int) -> dict:
    """Seconds per free-phase step of 784-n-10 at neuron granularity on `hosts` hosts, and the log-log slope."""
    rows = []
    for n in hidden:
        sizes = [cfg.sizes[0], n, cfg.sizes[-1]]
        fab_cfg = dataclasses.replace(cfg.fabric, hosts=hosts, timeout_s=max(cfg.fabric.timeout_s, 600.0))
        c, eng = _engine(cfg, engine="fabric", granularity="neuron", transport="zmq", sizes=sizes, fabric=fab_cfg)
        try:
            eng.set_batch(*_batch(c, sizes, c.batch, DTYPES[c.dtype]))
            eng.run_phase(Phase("free", 2))
            t0 = time.perf_counter()
            eng.run_phase(Phase("free", steps))
            rows.append({"nodes": len(eng.specs), "sizes": sizes, "step_s": (time.perf_counter() - t0) / steps})
        finally:
            eng.close()
    lx = torch.tensor([math.log(r["nodes"]) for r in rows], dtype=torch.float64)
    ly = torch.tensor([math.log(r["step_s"]) for r in rows], dtype=torch.float64)
    slope = float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())
    log(f"hosted: step time against logical nodes {[r['nodes'] for r in rows]}: log-log slope {slope:.2f}")
    return {"hosts": hosts, "steps": steps, "rows": rows, "slope": slope}


def hosted(cfg) -> tuple:
    """The hosted-neuron rows and the node scaling on the published P-MLP recipe (bench.PUBLISHED);
    quick: a 64-24-10 net on 2 hosts, one timed batch, three sizes for the slope."""
    net = dict(PUBLISHED, lr=5e-4, optimizer="adam")
    if cfg.quick:
        c = cfg.replace(**dict(net, sizes=[64, 24, 10], T1=5, T2=2))
        return hosted_neuron(c, [2], 1), nodes_scaling(c, [6, 14, 30], 2, 3)
    c = cfg.replace(**net)
    return hosted_neuron(c, [1, 2, 4], 2), nodes_scaling(c, [6, 22, 54, 118, 246, 512], 2, 5)


def neuron_hosts(n: int, setting: int) -> int:
    """fabric.hosts for an n-node neuron fabric: setting -1 (auto) gives every node an actor while n fits the
    process budget and n nodes on `process_budget()` hosts beyond; 0 always one actor per node; K > 0, K hosts."""
    if setting < 0:
        return 0 if n <= process_budget() else process_budget()
    return setting


def _frames(fab, itemrow: int) -> dict:
    """host_links {host: [hosts it sends a frame to]}, frame_bytes: the mean frame (the entries of
    cluster/runtime/exchange.py whose port leads to the peer, `itemrow` bytes per column)."""
    from cluster.runtime.exchange import entry_of
    f = fab.fabric
    widths = {}  # (host, peer) -> {entry: width}
    for s in fab.specs.values():
        for p in s.out_ports:
            a, b = f.placement[p.src], f.placement[p.dst]
            if a != b:
                widths.setdefault((a, b), {})[entry_of(p.src, p.kind, p.dst)] = p.width
    links = {h: sorted(b for a, b in widths if a == h) for h in f.hosts}
    columns = sum(sum(w.values()) for w in widths.values())
    return {"host_links": links, "frame_bytes": int(columns * itemrow / max(len(widths), 1))}


def neuron_fabric(cfg, n: int, steps: int, repeats: int, memory: bool) -> dict:
    """A neuron fabric of n logical nodes: sizes [d0, n//2, n - n//2] (layer 0 is the input, not a node), on one
    actor per node or on hosts (bench.neuron_hosts)."""
    sizes = [cfg.sizes[0], n // 2, n - n // 2]
    hosts = neuron_hosts(n, cfg.bench.neuron_hosts)
    fab_cfg = dataclasses.replace(cfg.fabric, timeout_s=max(cfg.fabric.timeout_s, 4.0 * n), hosts=hosts)
    used0 = bench_raw.used_memory_mb()
    c, fab = _engine(cfg, engine="fabric", granularity="neuron", transport="zmq", sizes=sizes, fabric=fab_cfg)
    try:
        out = {"nodes": n, "actors": len(fab.fabric.hosts), "hosts": hosts, "sizes": sizes, "batch": c.batch,
               "steps": steps, "fabric_start_s": fab.fabric.start_s, "exchange": fab.fabric.exchange}
        if out["actors"] < n:  # hosted: which hosts exchange frames, and their mean size (bench_raw's comparator)
            out.update(_frames(fab, c.batch * torch.empty((), dtype=DTYPES[c.dtype]).element_size()))
        fab.set_batch(*_batch(c, sizes, c.batch, DTYPES[c.dtype]))
        fab.run_phase(Phase("free", steps))  # warm-up
        fab.message_logs(clear=True)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fab.run_phase(Phase("free", steps))
            times.append(time.perf_counter() - t0)
        logs = fab.message_logs(clear=True)
        msgs = state_messages(logs)
        out.update(step_us=statistics.median(times) / steps * 1e6, state_messages=msgs,
                   wire_messages=state_messages(logs, fab.fabric.placement),
                   msgs_per_step=msgs / (repeats * (steps + 1)), msgs_per_s=msgs / sum(times),
                   payload_bytes=c.batch * torch.empty((), dtype=DTYPES[c.dtype]).element_size())
        if memory:
            import ray
            pids = ray.get([h.__ray_call__.remote(bench_raw.actor_pid) for h in fab.fabric.hosts.values()])
            mem = [bench_raw.proc_memory_mb(p) for p in pids]
            rss = [m["vmrss"] for m in mem if "vmrss" in m]
            pss = [m["pss"] for m in mem if "pss" in m]
            out["memory"] = {
                "method": "VmRSS (and Pss) from /proc/<pid> of every actor process, pids from "
                          "actor.__ray_call__(os.getpid); also (used after start - used before) / actors "
                          "from /proc/meminfo",
                "rss_mb_per_actor": statistics.mean(rss) if rss else None,
                "pss_mb_per_actor": statistics.mean(pss) if pss else None,
                "meminfo_delta_mb_per_actor": (bench_raw.used_memory_mb() - used0) / len(pids),
                "rss_mb_per_node": sum(rss) / n if rss else None}
    finally:
        fab.close()
    log(f"neuron fabric {n} nodes on {out['actors']} actors: start {out['fabric_start_s']:.1f} s, "
        f"{out['step_us'] / 1e3:.1f} ms/step, {out['msgs_per_s']:.0f} msgs/s "
        f"({out['wire_messages'] / max(out['state_messages'], 1):.0%} between actors)")
    return out


