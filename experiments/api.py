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
import time

from experiments.config import Config, _build, _set_dotted, load_config, validate
from experiments.families import commands, family_of, resolve
from protocols import get_protocol
from protocols.base import Protocol

FABRIC_SHORT = ("hosts", "split", "log", "timeout_s", "host", "wire", "actor_cpus", "placement", "resources", "ports")


def _config(base: Config | None, model, protocol, overrides: dict) -> Config:
    data = (base or load_config("train")).to_dict()
    for k, v in overrides.items():
        _set_dotted(data, f"fabric.{k}" if k in FABRIC_SHORT else k, v)
    if protocol is not None:
        data["protocol"] = get_protocol(protocol).name
    if model is not None:  # its family says which config keys describe how it was built
        data.update(family_of(model).hook("describe")(model))
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

    def train(self, out: str | None = None, progress: bool = False, resume: bool = False, **overrides) -> dict:
        """Train; `resume` continues the run in `out` from its last checkpoint. Returns what metrics.json holds
        (and the final parameters under `final_params`)."""
        from experiments.train import run_train
        return run_train(self._with(overrides), out or _stamp("train"), progress=progress, resume=resume,
                         model=self.model, protocol=self.protocol)

    def audit(self, out: str | None = None, quiet: bool = True, sets=(), **overrides) -> dict:
        """The gradient and locality audit; returns what audit.json holds. With the config's `replay`, `sets` are
        the command line's --set items that may change a replayed bundle's granularity, transport or engine."""
        from experiments.audit import run_audit
        return run_audit(self._with(overrides), out or _stamp("audit"), sets, quiet=quiet, model=self.model,
                         protocol=self.protocol)

    def sweep(self, out: str | None = None, grid=(), sets=(), **overrides) -> dict:
        """`audit` at every point of the grid (["beta=1e-1,1e-2", ...]); returns what sweep.json holds."""
        from experiments.sweep import run_sweep
        return run_sweep(self._with(overrides), out or _stamp("sweep"), grid, sets)

    def compare(self, out: str | None = None, **overrides) -> dict:
        """Every setting of the config's `compare` section at every grid point, trained per seed, with its
        update-BPTT alignment at the initial weights; returns what metrics.json holds."""
        from experiments.compare import run_compare
        return run_compare(self._with(overrides), out or _stamp("compare"))

    def experiment(self, name: str, out: str | None = None, **overrides) -> dict:
        """An experiment a family declares (experiments/families/: its `commands`, e.g. the layered nets' tradeoff);
        returns what its metrics.json holds."""
        cmds = commands()
        if name not in cmds:
            raise ValueError(f"experiment {name!r}: the families declare {sorted(cmds)}")
        return resolve(cmds[name].run)(self._with(overrides), out or _stamp(name))

    def bench(self, out: str | None = None, **overrides) -> dict:
        from experiments.bench import run_bench
        return run_bench(self._with(overrides), out or _stamp("bench"))

    @contextlib.contextmanager
    def engine(self, **overrides):
        """The configured engine (fabric or in-process), closed on exit."""
        from cluster.launch import make_engine
        eng = make_engine(self._with(overrides), self.model, self.protocol)
        try:
            yield eng
        finally:
            eng.close()


def _stamp(command: str) -> str:
    return f"results/{command}-{time.strftime('%Y%m%d-%H%M%S')}"
