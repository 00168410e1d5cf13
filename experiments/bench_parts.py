"""What the benchmarks share: the published setting they time, a seeded batch, an engine with its parameters set,
the count of data-plane messages in a log, Ray's process budget, and the progress log on stderr."""
from __future__ import annotations

import os
import sys
import time

import torch

from cluster.launch import DTYPES, make_engine, model_from


PUBLISHED = dict(sizes=[784, 512, 10], batch=50, T1=30, T2=10, beta=0.1, protocol="ep-symmetric",
                 model="prototypical", activation="sigmoid4")  # Laborieux et al. 2021, check/*.sh (MNIST MLP)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _batch(cfg, sizes, batch, dtype):
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.rand(batch, sizes[0], generator=gen, dtype=torch.float64).to(dtype)
    y = torch.nn.functional.one_hot(torch.randint(0, sizes[-1], (batch,), generator=gen), sizes[-1]).to(dtype)
    return x, y


def _engine(cfg, **changes):
    """An engine with its parameters set; returns (cfg', engine)."""
    c = cfg.replace(**changes)
    eng = make_engine(c)
    try:
        eng.set_params(model_from(c).init_params(c.seed, DTYPES[c.dtype]))
    except BaseException:
        eng.close()
        raise
    return c, eng


def state_messages(logs: dict, placement: dict = None) -> int:
    """Data-plane messages in message_logs() counters: [src, dst, kind, phase, count, bytes], src a node; with
    `placement` (node -> actor), only those between nodes on different actors (the ones that cross ZeroMQ)."""
    return sum(c[4] for node in logs["nodes"].values() for c in node["counters"] if c[0] != "coordinator"
               and (placement is None or placement[c[0]] != placement[c[1]]))


def process_budget() -> int:
    """The most actor processes Ray runs without its "N PYTHON worker processes have been started" warning: it
    warns from 4 x its startup concurrency, min(cpu_count, num_cpus) (Ray 2.60's services.py and raylet)."""
    return 4 * (os.cpu_count() or 1) - 1
