"""Resolves `engine`, `transport` and `granularity` in one place (like a run config), and starts Ray."""
from __future__ import annotations

import os

import torch

from nodes.model import LayeredModel

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def model_from(cfg) -> LayeredModel:
    return LayeredModel(cfg.model, tuple(cfg.sizes), cfg.activation, cfg.dt)


def init_ray(address=None, num_cpus=None) -> None:
    """Local Ray by default (loopback, no dashboard); `address` joins a cluster started from ray_config.yaml."""
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 _node_ip_address="127.0.0.1")


def make_engine(cfg, model=None, protocol=None):
    """The engine named by cfg.engine: the in-process reference, or a fabric of Ray actors."""
    model = model or model_from(cfg)
    protocol = protocol or cfg.protocol
    if cfg.engine == "reference":
        from cluster.reference import ReferenceEngine
        lrs = {f"{p}{n}": lr for n, lr in enumerate(cfg.lrs) for p in ("W", "b")}
        return ReferenceEngine(model, protocol, DTYPES[cfg.dtype], lrs, cfg.optimizer, cfg.momentum, cfg.device)
    from cluster.coordinator import FabricEngine
    init_ray(cfg.address)
    settings = dict(granularity=cfg.granularity, split=cfg.fabric.split, lr=cfg.lrs, protocol=protocol,
                    dtype=cfg.dtype, optimizer=cfg.optimizer, momentum=cfg.momentum, transport=cfg.transport,
                    host=cfg.fabric.host, wire=cfg.fabric.wire, log=cfg.fabric.log, timeout_s=cfg.fabric.timeout_s,
                    actor_cpus=cfg.fabric.actor_cpus)
    return FabricEngine(model, settings)
