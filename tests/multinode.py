"""A fabric on a two-node Ray cluster on this machine (ray.cluster_utils), trained a few batches and compared with
the in-process engine; run in its own process by tests/test_cluster.py (the test session holds a one-node Ray).

    python -m tests.multinode [--ref-seed N]    # prints one JSON line: where each host ran, the largest difference

Each node declares 2 CPUs and the run takes ray_config.yaml's fabric section (one CPU per host actor, pack): the
four host actors of a [6, 5, 4, 3] layer fabric cannot fit on one node, so the placement group puts two
neighbouring layers on each. The cluster is loopback-only (as a local run is: cluster/launch.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: every server binds 127.0.0.1
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETS = ["sizes=[6,5,4,3]", "activation=sigmoid", "dtype=float64", "granularity=layer", "T1=12", "T2=4", "beta=0.2",
        "lr=0.1", "optimizer=sgd", "batch=4", "seed=3", "init_scale=2.0"]
BATCHES = 3


def batches(model, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = model.groups[0].size, model.output_group.size
    for _ in range(BATCHES):
        x = torch.rand(4, d_in, generator=g, dtype=torch.float64)
        y = torch.nn.functional.one_hot(torch.randint(0, d_out, (4,), generator=g), d_out).to(torch.float64)
        yield x, y


def train(cfg, seed):
    """Parameters after BATCHES batches from the seeded initial weights, on the engine cfg names."""
    from cluster.launch import DTYPES, make_engine, model_from
    model = model_from(cfg)
    engine = make_engine(cfg, model)
    try:
        engine.set_params(model.init_params(seed, DTYPES[cfg.dtype], cfg.init_scale))
        for x, y in batches(model):
            engine.train_batch(x, y, cfg.beta, cfg.T1, cfg.T2)
        where = _where(engine) if cfg.engine == "fabric" else {}
        return engine.get_params(), where
    finally:
        engine.close()


def _where(engine):
    """{host: (its bundle index, the Ray node it runs on)}, from Ray's own runtime context inside each actor."""
    import ray
    fab = engine.fabric
    nodes = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                     for a in fab.hosts.values()])
    table = ray.util.placement_group_table(fab.pg)
    return {"hosts": dict(zip(fab.hosts, nodes)), "bundles_on": table["bundles_to_node_id"],
            "order": fab.bundle_order}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref-seed", type=int, default=None, help="seed the single-node run differently (must fail)")
    args = ap.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from experiments.config import load_config
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, include_dashboard=False))
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = load_config("train", [*SETS, f"address={cluster.address}"])
        params, where = train(cfg, cfg.seed)
        ref = cfg.replace(engine="reference", address=None)
        expect, _ = train(ref, cfg.seed if args.ref_seed is None else args.ref_seed)
        diff = max(float((params[k] - expect[k]).abs().max()) for k in expect)
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        print(json.dumps({"max_abs_diff": diff, "nodes": nodes, **where,
                          "fabric": {k: getattr(cfg.fabric, k) for k in ("host", "wire", "placement",
                                                                         "actor_cpus")}}))
        return 0 if diff <= 1e-12 else 1
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
