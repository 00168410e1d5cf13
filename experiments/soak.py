"""Soak (docs/guide/reliability.md): a neuron fabric of >= 100 logical nodes on a few host actors, run for many steps.

    python -m experiments.soak [--nodes N] [--hosts K] [--steps S] [--chunk C] [--out DIR] [--quick]

The free phase runs as S / C consecutive phases of C steps (`run_phase(Phase("free", C))`); after each one the
driver reads every host actor's VmRSS (and Pss) from /proc/<pid> (pids from `actor.__ray_call__(os.getpid)`) and
the message logs (cleared each time). Delivered data-plane messages are compared, per chunk and in total, with
what the bench expects: directed edges x (steps + 1) per phase. Prints a table; writes soak.json and config.yaml.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from cluster.locality import locality_report
from cluster.launch import DTYPES
from experiments import bench_raw
from experiments.bench_parts import _batch, _engine, state_messages
from experiments.config import load_config
from experiments.results import prepare, write_json
from protocols.base import Phase

D_IN = 8  # input width (layer 0 is boundary, not a node)


def layer_sizes(nodes: int) -> list:
    """Three node layers in the ratio 2:4:1 (112 -> [32, 64, 16]), preceded by the input width."""
    a, c = max(1, round(2 * nodes / 7)), max(1, round(nodes / 7))
    return [D_IN, a, nodes - a - c, c]


def soak_config(nodes: int, hosts: int, batch: int, sets=()):
    sizes = layer_sizes(nodes)
    base = [f"sizes={sizes}", "engine=fabric", "granularity=neuron", "transport=zmq", f"fabric.hosts={hosts}",
            f"batch={batch}", "lr=0.01", "fabric.log=counters"]
    return load_config("train", base + list(sets))


def memory(pids: dict) -> dict:
    """{host: {"vmrss": MB, "pss": MB}} read from /proc by the driver."""
    return {h: bench_raw.proc_memory_mb(p) for h, p in pids.items()}


def soak(cfg, steps: int, chunk: int, progress=print) -> dict:
    """Run the soak on a fabric built from `cfg` and return the figures (see the module docstring)."""
    import ray
    if steps % chunk:
        raise ValueError(f"soak: steps ({steps}) must be a multiple of chunk ({chunk})")
    c, eng = _engine(cfg)
    try:
        edges = {(p.src, p.dst, p.kind) for s in eng.specs.values() for p in s.in_ports}
        hosts = eng.fabric.hosts
        pids = dict(zip(hosts, ray.get([a.__ray_call__.remote(bench_raw.actor_pid) for a in hosts.values()])))
        pids["driver"] = os.getpid()
        eng.set_batch(*_batch(c, c.sizes, c.batch, DTYPES[c.dtype]))
        eng.message_logs(clear=True)
        samples = [{"step": 0, "seconds": 0.0, "memory": memory(pids)}]
        delivered = wire = violations = 0
        per_phase = len(edges) * (chunk + 1)
        wall = 0.0
        for k in range(1, steps // chunk + 1):
            t0 = time.perf_counter()
            eng.run_phase(Phase("free", chunk))
            wall += time.perf_counter() - t0
            mem = memory(pids)
            logs = eng.message_logs(clear=True)
            n, w = state_messages(logs), state_messages(logs, eng.fabric.placement)
            rep = locality_report(eng.specs, logs, eng.protocol)
            delivered, wire, violations = delivered + n, wire + w, violations + len(rep["violations"])
            samples.append({"step": k * chunk, "seconds": wall, "memory": mem, "delivered": n,
                            "expected": per_phase, "violations": len(rep["violations"])})
            progress(f"[soak] step {k * chunk}: {wall:.0f} s, {n} msgs (expected {per_phase}), RSS MB "
                     + " ".join(f"{h}={m.get('vmrss', float('nan')):.0f}" for h, m in mem.items()))
        phases = steps // chunk
        return {"nodes": len(eng.specs), "hosts": len(hosts), "sizes": list(c.sizes), "batch": c.batch,
                "dtype": c.dtype, "transport": c.transport, "edges": len(edges),
                "legal_edges": rep["legal_edges"], "steps": steps, "chunk": chunk, "phases": phases,
                "expected_messages": len(edges) * (steps + phases), "delivered_messages": delivered,
                "wire_messages": wire, "violations": violations, "fabric_start_s": eng.fabric.start_s,
                "wall_s": wall, "steps_per_s": steps / wall, "msgs_per_s": delivered / wall,
                "pids": pids, "samples": samples,
                "method": (f"free phase run as {phases} consecutive phases of {chunk} steps; after each, VmRSS and "
                           "Pss of every host actor (and the driver) from /proc/<pid>/status and smaps_rollup; "
                           "messages from message_logs(clear=True): data-plane counters, src a node; expected = "
                           "directed ports x (chunk + 1) per phase; wall_s sums the phases' run_phase calls")}
    finally:
        eng.close()


def rss_table(out: dict, at: tuple) -> list:
    """Rows [who, RSS at each step in `at`, growth first -> last] from the samples."""
    by_step = {s["step"]: s["memory"] for s in out["samples"]}
    rows = []
    for who in out["pids"]:
        mb = [by_step[t][who].get("vmrss") for t in at]
        rows.append([who, *mb, None if None in mb else mb[-1] - mb[0]])
    return rows


def table(out: dict) -> str:
    first, last = out["chunk"], out["steps"]
    t = [s["seconds"] for s in out["samples"]]
    rates = [out["chunk"] / (b - a) for a, b in zip(t, t[1:])]
    ok = "yes" if out["delivered_messages"] == out["expected_messages"] else "NO"
    lines = [f"nodes {out['nodes']} (sizes {out['sizes']}, batch {out['batch']}, {out['dtype']}) on {out['hosts']} "
             f"host actors, {out['edges']} directed edges, {out['steps']} steps "
             f"({out['phases']} phases of {out['chunk']}), transport {out['transport']}",
             f"delivered {out['delivered_messages']:,} vs expected {out['expected_messages']:,}: {ok} "
             f"({out['wire_messages']:,} crossed hosts; {out['violations']} locality violations)",
             f"wall {out['wall_s']:.1f} s (start {out['fabric_start_s']:.1f} s), {out['steps_per_s']:.1f} steps/s, "
             f"{out['msgs_per_s']:,.0f} msgs/s; per phase {min(rates):.1f}-{max(rates):.1f} steps/s", "",
             f"{'process':10s} {'RSS MB @' + str(first):>14s} {'RSS MB @' + str(last):>14s} {'growth MB':>10s}"]
    for who, a, b, d in rss_table(out, (first, last)):
        lines.append(f"{who:10s} {a:14.1f} {b:14.1f} {d:+10.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=112, help="logical neuron nodes (default 112: sizes [8,32,64,16])")
    p.add_argument("--hosts", type=int, default=4, help="host actors (fabric.hosts, default 4)")
    p.add_argument("--steps", type=int, default=10_000, help="free-phase steps in all (default 10000)")
    p.add_argument("--chunk", type=int, default=1_000, help="steps per phase, RSS sampled after each (default 1000)")
    p.add_argument("--batch", type=int, default=16, help="samples per message payload (default 16)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override on top of experiments/configs/train.yaml; repeatable")
    p.add_argument("--out", help="results folder (default results/soak-<timestamp>/)")
    p.add_argument("--quick", action="store_true", help="12 nodes on 2 hosts, 200 steps in phases of 100")
    a = p.parse_args(argv)
    if a.quick:
        a.nodes, a.hosts, a.steps, a.chunk = 12, 2, 200, 100
    cfg = soak_config(a.nodes, a.hosts, a.batch, a.sets)
    out_dir = prepare(a.out or f"results/soak-{time.strftime('%Y%m%d-%H%M%S')}", cfg)
    out = soak(cfg, a.steps, a.chunk, progress=lambda m: print(m, file=sys.stderr, flush=True))
    out["command"] = " ".join(["python -m experiments.soak", *(sys.argv[1:] if argv is None else argv)])
    write_json(os.path.join(out_dir, "soak.json"), out)
    print(table(out))
    return 0 if out["delivered_messages"] == out["expected_messages"] and not out["violations"] else 1


if __name__ == "__main__":
    sys.exit(main())
