"""Resolves `engine`, `transport`, `granularity` and `fabric.hosts` in one place (like a run config), and starts Ray.

`make_engine(cfg, model=None, protocol=None)` returns the engine the config names; `model` and `protocol` may be
objects built in Python (experiments/api.py), a registered protocol's name, or None (from the config).
"""
from __future__ import annotations

import os

import torch

from nodes.layered import directed_graph, layered, layered_asym

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def model_from(cfg):
    from nodes.hamiltonian import HAMILTONIAN_MODELS
    if cfg.model in HAMILTONIAN_MODELS:
        from experiments.sequences import model_of
        return model_of(cfg)
    if cfg.model == "vector-graph":  # sizes [inputs, units, outputs]: the last `outputs` units are the output
        n_in, n_units, n_out = cfg.sizes
        return directed_graph(n_units, n_in, n_out, activation=cfg.activation, dt=cfg.dt, physics="vector-field",
                              name="vector-graph")
    if cfg.model in ("prototypical-asym", "vector-field"):
        return layered_asym(tuple(cfg.sizes), cfg.activation, True, cfg.dt,
                            "prototypical" if cfg.model == "prototypical-asym" else "vector-field",
                            feedback_init=cfg.feedback_init, angle=cfg.angle)
    return layered(cfg.model, tuple(cfg.sizes), cfg.activation, cfg.dt)


def protocol_from(cfg, protocol=None):
    """The run's protocol object: `protocol` (an object or a registered name; default cfg.protocol) with the config
    keys it carries (its `keys`, e.g. N) set from cfg."""
    from protocols import get_protocol
    p = get_protocol(protocol if protocol is not None else cfg.protocol)
    return p.configured(**{k: getattr(cfg, k) for k in p.keys}) if p.keys else p


def init_ray(address=None, num_cpus=None) -> None:
    """A local Ray by default, loopback only (see `_loopback_only`), no dashboard. `address` (auto, HOST:PORT,
    ray://HOST:PORT) joins a cluster started from ray_config.yaml; no runtime_env is sent: the launcher's
    setup_commands install this project on every node, so the workers import the same code as the driver."""
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
    else:
        _loopback_only()
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 _node_ip_address="127.0.0.1")  # "local": a new instance, never one another run left running


def _loopback_only() -> None:
    """Keep a local Ray's control plane on 127.0.0.1. Ray 2.60 turns a loopback node address into the machine's own
    address, and its GCS, raylet and workers then listen on every interface; with clusters switched off (the flag
    Ray itself uses on macOS and Windows) the node address stays 127.0.0.1 and every server binds loopback. The flag
    is read when ray is imported, so the module constant is set too; the child processes read the variable."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def ship_by_value(*objects) -> None:
    """Code defined outside the installed packages (a protocol or a model's rule class in a test file, a script, a
    notebook) travels to the actors by value: Ray's cloudpickle is told to serialise its module's code instead of a
    reference the workers might not import (the control plane; the data plane never pickles)."""
    import sys

    from ray import cloudpickle
    for obj in objects:
        cls = obj if isinstance(obj, type) else type(obj)
        mod = cls.__module__
        if mod.split(".")[0] in ("protocols", "nodes", "cluster", "experiments", "builtins") or mod == "__main__":
            continue  # installed packages go by reference, __main__ by value already
        if mod in sys.modules:
            cloudpickle.register_pickle_by_value(sys.modules[mod])


def make_engine(cfg, model=None, protocol=None, local: bool = False):
    """The engine named by cfg.engine: the in-process reference, or a fabric of Ray actors (`local`: hosts as
    threads in this process, for tests)."""
    from cluster.coordinator import lrs_by_param
    model = model or model_from(cfg)
    protocol = protocol_from(cfg, protocol)
    if cfg.engine == "reference":
        from cluster.reference import ReferenceEngine
        return ReferenceEngine(model, protocol, DTYPES[cfg.dtype], lrs_by_param(model, cfg.lrs), cfg.optimizer,
                               cfg.momentum, cfg.device, forget_free=cfg.forget_free, noise=cfg.noise, seed=cfg.seed,
                               residual_tol=cfg.residual_tol)
    from cluster.coordinator import FabricEngine
    if not local:
        init_ray(cfg.address)
    settings = dict(granularity=cfg.granularity, split=cfg.fabric.split, hosts=cfg.fabric.hosts,
                    exchange=cfg.fabric.exchange, lr=cfg.lrs, dtype=cfg.dtype, optimizer=cfg.optimizer, momentum=cfg.momentum, transport=cfg.transport,
                    host=cfg.fabric.host, wire=cfg.fabric.wire, curve=cfg.fabric.curve, log=cfg.fabric.log,
                    timeout_s=cfg.fabric.timeout_s, actor_cpus=cfg.fabric.actor_cpus, placement=cfg.fabric.placement, resources=cfg.fabric.resources,
                    ports=cfg.fabric.ports, forget_free=cfg.forget_free, noise=cfg.noise, seed=cfg.seed,
                    residual_tol=cfg.residual_tol)
    return FabricEngine(model, protocol, settings, local=local)
