"""The Python API: build a model, take a registered protocol or pass your own, run it on either engine, train or
audit, read the results. The CLI (python -m experiments) is a thin layer over the same functions.

    from experiments.api import Simulator
    from nodes.layered import layered

    sim = Simulator(layered("prototypical", [64, 32, 10], "sigmoid4"), protocol="ep-symmetric",
                    engine="fabric", granularity="neuron", hosts=2, beta=0.1, T1=30, T2=10)
    report = sim.audit(dataset="random", batch=8)       # gradient + locality audit: a dict, as audit.json
    metrics = sim.train(dataset="digits", epochs=2)     # a dict, as metrics.json
    with sim.engine() as eng:                           # the raw engine interface (cluster/engine.py)
        eng.set_params(sim.model.init_params(0)); ...

Keyword arguments are config keys (experiments/config.py; `fabric.hosts` may be written `hosts`); `protocol` may be
a protocols.base.Protocol object defined anywhere (it travels to the fabric's actors by value). Every call writes
its results folder (`out`, default results/<command>-<timestamp>/) exactly as the CLI does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

from experiments.config import Config, _build, _set_dotted, load_config, validate
from protocols import get_protocol
from protocols.base import Protocol

FABRIC_SHORT = ("hosts", "split", "log", "timeout_s", "host", "wire", "actor_cpus")


def _config(base: Config | None, model, protocol, overrides: dict) -> Config:
    data = (base or load_config("train")).to_dict()
    for k, v in overrides.items():
        _set_dotted(data, f"fabric.{k}" if k in FABRIC_SHORT else k, v)
    if protocol is not None:
        data["protocol"] = get_protocol(protocol).name
    if model is not None:
        data["sizes"] = [g.size for g in model.groups]
        data["model"], data["activation"], data["dt"] = model.name, model.activation, model.dt
    return validate(_build(Config, data), model=model, protocol=protocol)


class Simulator:
    def __init__(self, model=None, protocol: str | Protocol | None = None, config: Config | str | None = None,
                 **overrides):
        """model: a nodes.graph.Model (default: the config's layered net); protocol: a name or an object;
        config: a Config or the name/path of a YAML config (default `train`); overrides: config keys."""
        base = load_config(config) if isinstance(config, str) else config
        self.model, self.protocol = model, protocol
        self.config = _config(base, model, protocol, overrides)

    def _with(self, overrides: dict) -> Config:
        return _config(self.config, self.model, self.protocol, overrides) if overrides else self.config

    def train(self, out: str | None = None, progress: bool = False, **overrides) -> dict:
        from experiments.train import run_train
        cfg = self._with(overrides)
        summary = run_train(cfg, out or _stamp("train"), progress=progress, model=self.model, protocol=self.protocol)
        return summary

    def audit(self, out: str | None = None, quiet: bool = True, **overrides) -> dict:
        from experiments.audit import run_audit
        cfg = dataclasses.replace(self._with(overrides), replay=None)
        return run_audit(cfg, out or _stamp("audit"), quiet=quiet, model=self.model, protocol=self.protocol)

    @contextlib.contextmanager
    def engine(self, **overrides):
        """The configured engine (fabric or in-process), closed on exit."""
        from cluster.runtime import make_engine
        eng = make_engine(self._with(overrides), self.model, self.protocol)
        try:
            yield eng
        finally:
            eng.close()


def _stamp(command: str) -> str:
    return f"results/{command}-{time.strftime('%Y%m%d-%H%M%S')}"
