"""`python -m experiments bench`: side-by-side timings of the fabric, the in-process engine and raw transports.

Everything is measured in one run on one machine, so the ratios (not the absolute times) are the result.
Writes bench.json (`ratios`, `targets`, `met`, raw timings, machine), config.yaml and bench.png; prints a table
to stdout and progress to stderr. `quick=true` shrinks the grid, the step counts and the neuron fabric (listed
under `shrunk`) but keeps every ratio key.
"""
from __future__ import annotations

import json
import dataclasses
import os
import platform
import statistics
import time

import torch
import yaml

from cluster.runtime.coordinator import lrs_by_param
from cluster.inprocess import ReferenceEngine
from cluster.launch import DTYPES, make_engine, model_from
from cluster.runtime.ray_setup import init_ray
from cluster.runtime.transport import resolve_wire
from experiments import bench_hosted, bench_raw
from experiments.bench_parts import PUBLISHED, _batch, _engine, log, process_budget
from nodes.activations import ACTIVATIONS
from protocols.base import Phase

TARGETS = {  # ratio key -> (comparison, target); None: reported, no target on this machine
    "layer_fabric_over_bare_pattern": ("<=", 1.1),     # against the same pattern in bare pyzmq + torch
    "neuron_over_bare_pattern": (">=", 0.9),
    "layer_fabric_over_inprocess": ("<=", None),       # a target on a 16-core machine, not on 2 cores
    "neuron_msg_rate_over_raw_zmq": (">=", None),      # the first benchmark's, replaced by neuron_over_bare_pattern
    "zmq_over_ray_transport": ("<=", 0.2),
    "explicit_over_autograd": ("<=", 0.1),
    "inprocess_over_matmuls": ("<=", 1.15),
    "max_neuron_actors": (">=", 64),
    "cuda_step_us": ("<=", 100.0),
    "hosted_neuron_epoch_over_layer_epoch": ("<=", 10.0),   # P-MLP at neuron granularity on 2 hosts
    "hosted_neuron_rss_gb": ("<=", 3.0),
    "nodes_slope": ("<=", 1.1),
}
SETTLE_S = 0.1


def per_step(engines: dict, steps: int, repeats: int) -> dict:
    """One warm-up free phase each, then `repeats` rounds of one timed free phase of `steps` steps per engine,
    interleaved so that load from elsewhere hits every engine alike: {name: median seconds per step}.
    A short pause before each timing lets the previous engine's background work (Ray's clean-up of
    fire-and-forget calls, zmq I/O threads) finish."""
    free = Phase("free", steps)
    for eng in engines.values():
        eng.run_phase(free)
    times = {k: [] for k in engines}
    for _ in range(repeats):
        for k, eng in engines.items():
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            eng.run_phase(free)
            times[k].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()} | {k + "_min": min(v) for k, v in times.items()}


def phase_call_us(eng, repeats: int) -> float:
    """A zero-step phase: the coordinator's call to every node plus one exchange (the per-phase overhead)."""
    eng.run_phase(Phase("free", 0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        eng.run_phase(Phase("free", 0))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


# ---- layer fabric vs in-process (and vs the Ray transport on the main net) -------------------------------
def layer_grid(cfg, main, grid, steps, repeats, rt_bytes, rt_iters) -> tuple:
    """Rows of per-step times over sizes x dtypes x batches; on the main net a transport=ray fabric is timed
    in the same rounds. Returns (rows, ray transport results)."""
    rows, ray_out = [], None
    for sizes in grid["sizes"]:
        for dtype in grid["dtypes"]:
            is_main = list(sizes) == main["sizes"] and dtype == main["dtype"]
            fabs = {}
            try:
                _, ref = _engine(cfg, engine="reference", sizes=list(sizes), dtype=dtype)
                for tr in ("zmq", "ray") if is_main else ("zmq",):
                    c, fabs[tr] = _engine(cfg, engine="fabric", granularity="layer", transport=tr,
                                          sizes=list(sizes), dtype=dtype)
                for batch in grid["batches"]:
                    x, y = _batch(c, sizes, batch, DTYPES[dtype])
                    engines = {"ref": ref}
                    if is_main and batch == main["batch"]:
                        engines["mm"] = Products(cfg, sizes, batch, DTYPES[dtype])
                    engines["zmq"] = fabs["zmq"]
                    if is_main and batch == main["batch"]:
                        engines["ray"] = fabs["ray"]
                    for eng in engines.values():
                        eng.set_batch(x, y)
                    t = per_step(engines, steps, repeats)
                    rows.append({"sizes": list(sizes), "batch": batch, "dtype": dtype, "steps": steps,
                                 "inprocess_step_us": t["ref"] * 1e6, "fabric_step_us": t["zmq"] * 1e6,
                                 "ratio": t["zmq"] / t["ref"], "fabric_start_s": fabs["zmq"].fabric.start_s,
                                 "fabric_phase_call_us": phase_call_us(fabs["zmq"], repeats),
                                 "min_us": {k: v * 1e6 for k, v in t.items() if k.endswith("_min")}}
                                | ({"matmul_step_us": t["mm"] * 1e6} if "mm" in t else {}))
                    log(f"layer {sizes} B={batch} {dtype}: in-process {rows[-1]['inprocess_step_us']:.0f} µs, "
                        f"fabric {rows[-1]['fabric_step_us']:.0f} µs/step"
                        + (f", ray transport {t['ray'] * 1e6:.0f} µs/step" if "ray" in t else ""))
                    if is_main and batch == main["batch"]:
                        raw = [bench_raw.layer_exchange_step(sizes, batch, dtype, steps) for _ in range(repeats)]
                        rows[-1]["raw_same_pattern_step_us"] = statistics.median(r["step_us"] for r in raw)
                        log(f"  raw pyzmq + torch, same pattern and processes: "
                            f"{rows[-1]['raw_same_pattern_step_us']:.0f} µs/step")
                    if "ray" in t:
                        handle = next(iter(fabs["ray"].fabric.hosts.values()))
                        ray_out = {"sizes": list(sizes), "batch": batch, "dtype": dtype, "steps": steps,
                                   "step_us": t["ray"] * 1e6, "zmq_step_us": t["zmq"] * 1e6,
                                   "fabric_start_s": fabs["ray"].fabric.start_s,
                                   "ray_round_trip": [bench_raw.ray_round_trip(handle, n, rt_iters)
                                                      for n in rt_bytes]}
            finally:
                for f in fabs.values():
                    f.close()
    return rows, ray_out


# ---- neuron fabric ---------------------------------------------------------------------------------------


# ---- in-process: matmuls alone, research-code autograd EP ------------------------------------------------
class Products:
    """The matrix products of one in-process step, alone (input drive precomputed), behind `run_phase` so that
    `per_step` times them in the same rounds as the engines. For 784-512-512-10: a2@W1 (layer 1), a1@W1.T and
    a3@W2 (layer 2), a2@W2.T (layer 3), as the same torch.addmm calls nodes/dynamics.field makes."""

    def __init__(self, cfg, sizes, batch, dtype, device="cpu"):
        model = model_from(cfg.replace(sizes=list(sizes)))
        self.p = {k: v.to(device) for k, v in model.init_params(cfg.seed, dtype).items()}
        self.N, self.device = len(model.sizes) - 1, str(device)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.a = [None] + [torch.rand(batch, d, generator=gen, dtype=dtype).to(device) for d in sizes[1:]]
        self.c1 = torch.rand(batch, sizes[1], generator=gen, dtype=dtype).to(device)

    def run_phase(self, phase):
        a, p, N, steps = self.a, self.p, self.N, phase.steps
        for _ in range(steps):
            for n in range(1, N + 1):
                h = self.c1 if n == 1 else torch.addmm(p[f"b{n - 1}"], a[n - 1], p[f"W{n - 1}"].T)
                if n < N:
                    h = torch.addmm(h, a[n + 1], p[f"W{n}"])
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def set_batch(self, x, y=None):
        pass

    def close(self):
        pass


def _phi(x, y, s, W, b, beta):
    """Phi(x, s, beta) per sample = sum_n s_{n+1}.(W_n s_n + b_n) - beta 1/2 ||s_N - y||^2 (as in P_MLP.Phi)."""
    layers = [x] + s
    phi = sum(torch.sum(torch.nn.functional.linear(layers[n], W[n], b[n]) * layers[n + 1], dim=1)
              for n in range(len(W)))
    if beta != 0:
        phi = phi - beta * 0.5 * ((s[-1] - y) ** 2).sum(dim=1)
    return phi


def _relax_autograd(x, y, s, W, b, T, beta, rho):
    """Research-code dynamics: s <- rho(dPhi/ds) by autograd, the input drive recomputed at every step."""
    ones = torch.ones(x.shape[0], dtype=x.dtype, requires_grad=True)
    for _ in range(T):
        grads = torch.autograd.grad(_phi(x, y, s, W, b, beta), s, grad_outputs=ones)
        s = [rho(g).requires_grad_() for g in grads]
    return s


def autograd_ep_batch(x, y, W, b, T1, T2, beta, rho, lrs):
    """Free, +beta and -beta phases, then grads of (Phi(s+, +b) - Phi(s-, -b)).mean() / (-2 beta) wrt params."""
    s = [torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype, requires_grad=True) for w in W]
    s0 = _relax_autograd(x, y, s, W, b, T1, 0.0, rho)
    sp = _relax_autograd(x, y, [t.detach().requires_grad_() for t in s0], W, b, T2, beta, rho)
    sm = _relax_autograd(x, y, [t.detach().requires_grad_() for t in s0], W, b, T2, -beta, rho)
    delta = (_phi(x, y, sp, W, b, beta).mean() - _phi(x, y, sm, W, b, -beta).mean()) / (-2 * beta)
    grads = torch.autograd.grad(delta, W + b)
    with torch.no_grad():
        for p, g, lr in zip(W + b, grads, lrs + lrs):
            p -= lr * g
    return grads


def explicit_vs_autograd(cfg, repeats) -> dict:
    c = cfg.replace(engine="reference", **PUBLISHED)
    dtype = DTYPES[c.dtype]
    model = model_from(c)
    params = model.init_params(c.seed, dtype)
    x, y = _batch(c, c.sizes, c.batch, dtype)
    ref = make_engine(c)
    ref.set_params(params)
    ref.set_batch(x, y)

    def explicit():  # what a training batch does: the program and the nodes' local updates
        ref.run_program(ref.program(c.beta, c.T1, c.T2))
        ref.update()

    N = len(model.sizes) - 1
    W = [params[f"W{n}"].clone().requires_grad_() for n in range(N)]
    b = [params[f"b{n}"].clone().requires_grad_() for n in range(N)]
    rho = ACTIVATIONS[c.activation][0]

    def research():
        return autograd_ep_batch(x, y, W, b, c.T1, c.T2, c.beta, rho, c.lrs)

    # correctness first: both estimates from the same initial parameters
    ref.set_params(params)
    ref.run_program(ref.program(c.beta, c.T1, c.T2))
    g_ref, g_ag = ref.estimate(), research()
    ref.update()
    diff = max(float((g_ref[f"{k}{n}"] - g.detach()).norm() / (g.norm() + 1e-30))
               for n in range(N) for k, g in (("W", g_ag[n]), ("b", g_ag[N + n])))
    out = {"setting": {k: c.to_dict()[k] for k in PUBLISHED} | {"dtype": c.dtype}, "max_rel_l2_update_diff": diff}
    times = {"explicit": [], "autograd": []}
    for _ in range(repeats):  # interleaved, like per_step
        for name, fn in (("explicit", explicit), ("autograd", research)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, v in times.items():
        out[f"{name}_batch_ms"], out[f"{name}_batch_min_ms"] = statistics.median(v) * 1e3, min(v) * 1e3
    log(f"EP batch (published setting): explicit {out['explicit_batch_ms']:.1f} ms, research autograd "
        f"{out['autograd_batch_ms']:.1f} ms (update rel diff {diff:.1e})")
    return out


def cuda_step(cfg, sizes, batch, steps, repeats) -> dict:
    """The in-process step on cfg.device (or cuda:0 when the config says cpu): replayed as CUDA graphs (the
    engine's default), launched kernel by kernel (capture=False), and its matrix products alone."""
    dtype, device = DTYPES[cfg.dtype], cfg.device if cfg.device.startswith("cuda") else "cuda"
    model = model_from(cfg.replace(sizes=list(sizes)))
    engines = {}
    for name, capture in (("graph", True), ("eager", False)):
        eng = engines[name] = ReferenceEngine(model, cfg.protocol, dtype, lrs_by_param(model, cfg.lrs), device=device,
                                              capture=capture)
        eng.set_params(model.init_params(cfg.seed, dtype))
        eng.set_batch(*_batch(cfg, sizes, batch, dtype))
    engines["mm"] = Products(cfg, sizes, batch, dtype, device)
    # every run_phase ends synchronised: the engine's last divergence check reads the state, Products syncs
    t = per_step(engines, steps, repeats)
    return {"step_us": t["graph"] * 1e6, "eager_step_us": t["eager"] * 1e6, "matmul_step_us": t["mm"] * 1e6,
            "device": torch.cuda.get_device_name(torch.device(device))}


# ---- the command -----------------------------------------------------------------------------------------
def plan(cfg) -> tuple:
    """(main net, grid, settings, shrunk): what runs; quick shrinks it and says what."""
    b = cfg.bench
    main = {"sizes": list(cfg.sizes), "batch": cfg.batch, "dtype": cfg.dtype}
    grid = {"sizes": [list(s) for s in b.sizes], "batches": list(b.batches), "dtypes": list(b.dtypes)}
    st = {"steps": b.steps, "repeats": b.repeats,
          "neurons": sorted({max(2, n) for n in b.neurons} | {max([64, *b.neurons])}), "neuron_steps": b.steps,
          "raw_msgs": 200_000, "rt_iters": 1000, "ray_rt_iters": 300,
          "ep_repeats": max(9, b.repeats),  # an EP batch takes ~0.1 s a round: 9 rounds cost ~1 s
          "neuron_hosts": b.neuron_hosts, "process_budget": process_budget()}
    shrunk = {}
    if cfg.quick:
        q = {"repeats": min(b.repeats, 3), "neurons": [4], "neuron_steps": 5, "raw_msgs": 30_000, "rt_iters": 200,
             "ray_rt_iters": 50, "ep_repeats": 5}
        shrunk = {k: {"from": st[k], "to": v} for k, v in q.items() if st[k] != v}
        st.update(q)
        qgrid = {"sizes": [main["sizes"]], "batches": [main["batch"]], "dtypes": [main["dtype"]]}
        shrunk["grid"] = {"from": grid, "to": qgrid}
        grid = qgrid
        shrunk["note"] = ("quick: only the main net/batch/dtype, fewer repeats and raw messages, a 4-node neuron "
                          "fabric (so max_neuron_actors is 4 and neuron_msg_rate_over_raw_zmq is on 4 nodes), and "
                          "host actors reused between fabrics (start times and memory are not a cold start's)")
    for k, v in (("sizes", main["sizes"]), ("batches", main["batch"]), ("dtypes", main["dtype"])):
        if v not in grid[k]:
            grid[k].append(v)
    return main, grid, st, shrunk


def _wire(cfg) -> str:
    return resolve_wire(cfg.fabric.wire, cfg.fabric.host)


def _ratio_met(key, value) -> bool:
    op, target = TARGETS[key]
    if target is None:
        return None
    return bool(value <= target if op == "<=" else value >= target)


def run_bench(cfg, out_dir) -> dict:
    t_start = time.perf_counter()
    # every fabric starts its own host actors: start times and memory are a cold start's (cluster/runtime/warm.py);
    # a quick run (a smoke test of the whole bench) reuses them, and says so
    cfg = cfg.replace(fabric=dataclasses.replace(cfg.fabric, reuse_hosts=bool(cfg.quick)))
    main, grid, st, shrunk = plan(cfg)
    log(f"plan: main {main}, grid {grid}, settings {st}")
    res = {"main": main, "settings": st, "shrunk": shrunk, "loadavg_start": os.getloadavg()}
    itemsize = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()

    # before Ray starts: a fresh Ray spawns its worker processes for seconds, which doubled the explicit median
    # in a 3-round run (26.5 ms, fastest round 13.9)
    res["ep_batch"] = explicit_vs_autograd(cfg, st["ep_repeats"])
    init_ray(cfg.address)
    rt_bytes = [main["batch"] * itemsize, main["batch"] * max(main["sizes"][1:]) * itemsize]
    res["layer"], res["ray_transport"] = layer_grid(cfg, main, grid, st["steps"], st["repeats"], rt_bytes,
                                                    st["ray_rt_iters"])
    row = next(r for r in res["layer"] if r["sizes"] == main["sizes"] and r["batch"] == main["batch"]
               and r["dtype"] == main["dtype"])
    res["matmul_step_us"] = row["matmul_step_us"]
    res["zmq_round_trip"] = [bench_raw.zmq_round_trip(n, st["rt_iters"], wire=_wire(cfg)) for n in rt_bytes]
    res["neuron"] = []
    for n in st["neurons"]:
        try:
            r = bench_hosted.neuron_fabric(cfg, n, st["neuron_steps"], st["repeats"], n == max(st["neurons"]))
            if r["actors"] == n:  # the same pattern in plain pyzmq: one process per node, as here
                r["raw_same_pattern"] = bench_raw.zmq_exchange_rate(n // 2, n - n // 2, r["payload_bytes"],
                                                                    3 * st["neuron_steps"])
            else:  # hosted: one process per host, one frame per host pair per step
                r["raw_same_pattern"] = bench_raw.zmq_exchange_hosts(r["host_links"], r["frame_bytes"],
                                                                     3 * st["neuron_steps"], r["msgs_per_step"])
                log(f"  raw pyzmq, same pattern and processes: {r['raw_same_pattern']['step_us'] / 1e3:.2f} ms/step, "
                    f"{r['raw_same_pattern']['msgs_per_s']:.0f} msgs/s")
            res["neuron"].append(r)
        except Exception as err:  # the largest fabric may not start on a small machine: record and go on
            log(f"neuron fabric of {n} nodes failed: {type(err).__name__}: {err}")
            res["neuron"].append({"nodes": n, "error": f"{type(err).__name__}: {err}"})
    ran = [r for r in res["neuron"] if "error" not in r]
    if not ran:
        raise RuntimeError("bench: no neuron fabric ran")
    big = max(ran, key=lambda r: r["nodes"])
    per_actor = max((r for r in ran if "raw_same_pattern" in r), key=lambda r: r["nodes"], default=None)
    bare = big["raw_same_pattern"]["msgs_per_s"] if "raw_same_pattern" in big else float("nan")
    res["raw_zmq"] = bench_raw.zmq_msg_rate(big["payload_bytes"], st["raw_msgs"], wire=_wire(cfg))
    log(f"raw zmq: {res['raw_zmq']['msgs_per_s']:.0f} msgs/s of {big['payload_bytes']} B")

    mins = row["min_us"]
    res["ratios_from_min"] = {  # the same ratios from the fastest round (less sensitive to load from elsewhere)
        "layer_fabric_over_inprocess": mins["zmq_min"] / mins["ref_min"],
        "zmq_over_ray_transport": mins["zmq_min"] / mins["ray_min"],
        "inprocess_over_matmuls": mins["ref_min"] / mins["mm_min"],
        "explicit_over_autograd": res["ep_batch"]["explicit_batch_min_ms"] / res["ep_batch"]["autograd_batch_min_ms"]}
    ratios = {
        "layer_fabric_over_bare_pattern": row["fabric_step_us"] / row["raw_same_pattern_step_us"],
        "neuron_over_bare_pattern": big["msgs_per_s"] / bare,
        "layer_fabric_over_inprocess": row["ratio"],
        "neuron_msg_rate_over_raw_zmq": big["msgs_per_s"] / res["raw_zmq"]["msgs_per_s"],
        "zmq_over_ray_transport": res["ray_transport"]["zmq_step_us"] / res["ray_transport"]["step_us"],
        "explicit_over_autograd": res["ep_batch"]["explicit_batch_ms"] / res["ep_batch"]["autograd_batch_ms"],
        "inprocess_over_matmuls": row["inprocess_step_us"] / res["matmul_step_us"],
        "max_neuron_actors": big["nodes"],
    }
    res["rss_mb_per_actor"] = big.get("memory", {}).get("rss_mb_per_actor")
    res["diagnostics"] = {  # no target: where the time goes
        "neuron_msg_rate_over_raw_same_pattern": (per_actor["msgs_per_s"] / per_actor["raw_same_pattern"]["msgs_per_s"]
                                                  if per_actor else float("nan")),
        "raw_same_pattern_over_raw_stream": (per_actor["raw_same_pattern"]["msgs_per_s"] / res["raw_zmq"]["msgs_per_s"]
                                             if per_actor else float("nan")),
        "neuron_same_pattern_nodes": per_actor["nodes"] if per_actor else None,
        "fabric_phase_call_us": row["fabric_phase_call_us"],
        "layer_fabric_over_raw_same_pattern": row["fabric_step_us"] / row["raw_same_pattern_step_us"],
        "raw_layer_same_pattern_over_inprocess": row["raw_same_pattern_step_us"] / row["inprocess_step_us"]}
    res["hosted_neuron"], res["nodes_scaling"] = bench_hosted.hosted(cfg)
    two = next(r for r in res["hosted_neuron"]["neuron"] if r["hosts"] == 2)
    ratios.update(hosted_neuron_epoch_over_layer_epoch=two["epoch_over_layer_epoch"],
                  hosted_neuron_rss_gb=two["rss_gb"], nodes_slope=res["nodes_scaling"]["slope"])
    if torch.cuda.is_available():
        res["cuda"] = cuda_step(cfg, main["sizes"], main["batch"], st["steps"], st["repeats"])
        ratios["cuda_step_us"] = res["cuda"]["step_us"]
    res["fabric_start_s"] = {"layer": [r["fabric_start_s"] for r in res["layer"]],
                             "ray_transport": res["ray_transport"]["fabric_start_s"],
                             "neuron": {r["nodes"]: r.get("fabric_start_s") for r in res["neuron"]}}
    out = {"ratios": ratios,
           "targets": {k: {"op": TARGETS[k][0], "value": TARGETS[k][1]} if TARGETS[k][1] is not None else None
                       for k in ratios},
           "met": {k: _ratio_met(k, v) for k, v in ratios.items()},
           "quick": cfg.quick, **res,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                       "loadavg_end": os.getloadavg(),
                       "note": "ratios come from interleaved rounds in one run; loadavg shows load from elsewhere"},
           "wall_s": time.perf_counter() - t_start}
    # the load before anything started (the end value counts this bench's own actors, 64 of them at the end)
    start = res["loadavg_start"][0]
    out["machine"]["overloaded"] = start > (os.cpu_count() or 1)
    if out["machine"]["overloaded"]:
        log(f"warning: load average {start:.1f} on {os.cpu_count()} CPUs before the bench: other processes "
            f"shared the machine; see ratios_from_min (fastest rounds) as well")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(out, f, indent=1, default=float)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    bench_raw.plot(out, os.path.join(out_dir, "bench.png"))
    print(bench_raw.table(out))
    log(f"done in {out['wall_s']:.0f} s; wrote {out_dir}/bench.json, bench.png, config.yaml")
    return out
