"""Resolves `engine`, `transport`, `granularity` and `fabric.hosts` in one place (like a run config), and starts Ray.

`make_engine(cfg, model=None, protocol=None)` returns the engine the config names; `model` and `protocol` may be
objects built in Python (experiments/api.py), a registered protocol's name, or None (from the config).
"""
from __future__ import annotations

import torch

from cluster.runtime.ray_setup import init_ray
from cluster.runtime.settings import FabricSettings
from nodes.models import build

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def model_from(cfg):
    """The Model the config names (nodes/models.py: every model kind registers its builder)."""
    return build(cfg)


def protocol_from(cfg, protocol=None):
    """The run's protocol object: `protocol` (an object or a registered name; default cfg.protocol) with the config
    keys it carries (its `keys`, e.g. N) set from cfg."""
    from protocols import get_protocol
    p = get_protocol(protocol if protocol is not None else cfg.protocol)
    return p.configured(**{k: getattr(cfg, k) for k in p.keys}) if p.keys else p


def make_engine(cfg, model=None, protocol=None, local: bool = False):
    """The engine named by cfg.engine: the in-process reference, or a fabric of Ray actors (`local`: hosts as
    threads in this process, for tests)."""
    from cluster.runtime.coordinator import lrs_by_param
    model = model or model_from(cfg)
    protocol = protocol_from(cfg, protocol)
    if cfg.engine == "reference":
        from cluster.inprocess import ReferenceEngine
        return ReferenceEngine(model, protocol, DTYPES[cfg.dtype], lrs_by_param(model, cfg.lrs), cfg.optimizer,
                               cfg.momentum, cfg.device, forget_free=cfg.forget_free, noise=cfg.noise, seed=cfg.seed,
                               residual_tol=cfg.residual_tol)
    from cluster.runtime.coordinator import FabricEngine
    if not local:
        init_ray(cfg.address)
    return FabricEngine(model, protocol, fabric_settings(cfg), local=local)


def fabric_settings(cfg) -> FabricSettings:
    """The fabric's settings from a config (cfg.fabric and the run's keys the hosts read)."""
    f = cfg.fabric
    return FabricSettings(lr=tuple(cfg.lrs), dtype=cfg.dtype, granularity=cfg.granularity, split=f.split,
                          hosts=f.hosts, exchange=f.exchange, transport=cfg.transport, host=f.host, wire=f.wire,
                          curve=f.curve, ports=None if f.ports is None else tuple(f.ports), log=f.log,
                          timeout_s=f.timeout_s, actor_cpus=f.actor_cpus, placement=f.placement,
                          resources=dict(f.resources), reuse_hosts=f.reuse_hosts, optimizer=cfg.optimizer,
                          momentum=cfg.momentum,
                          forget_free=cfg.forget_free, noise=cfg.noise, seed=cfg.seed,
                          residual_tol=cfg.residual_tol)


def node_specs(cfg, model, protocol) -> dict:
    """{node id: NodeSpec}: the logical nodes of the engine cfg names, without starting it: the fabric's partition
    (granularity, fabric.split), the in-process engine's layer partition; `protocol` an object (its ports)."""
    if cfg.engine == "reference":
        return model.node_specs(model.partition("layer"), protocol.ports)
    return model.node_specs(model.partition(cfg.granularity, cfg.fabric.split), protocol.ports)
