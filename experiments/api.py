"""The Python API: build a model, take a registered protocol or pass your own, run it on either engine, step by
step with named probes or through the pipelines (train, audit, ...), read the results. The CLI (python -m
experiments) is a thin layer over the same functions.

    from experiments.api import Phase, Probe, Simulator
    from nodes.layered import layered

    net = layered("prototypical", [64, 32, 10], "sigmoid4")
    with Simulator(net, protocol="ep-symmetric", engine="fabric", hosts=2, dtype="float64",
                   probes=[Probe("L1", every=5), Probe(edge=("L1", "L2"))]) as sim:
        print(sim.summary())                       # nodes, hosts, ports, parameter owners; nothing started yet
        free = sim.run(30, x=x, y=y)               # {"L1": (6, B, 32) at steps 5..30, "L1->L2": (30, B, 32)}
        plus = sim.run(Phase("plus", 10, beta=0.1, coef=10.0), probes=[Probe(accumulators="L2")])
        print(plus.steps["L1"], plus["L2.accumulators"]["acc.W1"].shape)   # [35, 40] (10, 32)
    report = Simulator(net, protocol="ep-symmetric").audit(dataset="random", batch=8)   # a dict; writes nothing

`run` continues from where the last run ended (reset() starts again from zero) on a batch set by `set_batch(x, y)`
or its x=, y=; it returns the probes' data by name (experiments/probes.py: shapes, step numbering). `summary()` is
experiments/summary.py. Keyword arguments are config keys (experiments/config.py; `fabric.hosts` may be written
`hosts`); `protocol` may be a protocols.base.Protocol object defined anywhere (it travels to the fabric's actors by
value). `train`, `audit`, `sweep`, `compare`, `experiment` and `bench` write their results folder where `out` says
(as the CLI does, which always names one); out=None writes nothing and returns the same dict.
`with sim.engine() as eng:` gives a new raw engine (cluster/engine.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile

import torch

from experiments.config import Config, ConfigError, _build, _set_dotted, load_config, validate
from experiments.families import commands, family_of, resolve
from experiments.probes import Probe, ProbeData, check_probes, sampled
from protocols import get_protocol
from protocols.base import Phase, Protocol

__all__ = ["Simulator", "Probe", "ProbeData", "Phase"]

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
                 probes=(), **overrides):
        """model: a nodes.graph.Model (default: the config's layered net); protocol: a name or an object;
        config: a Config or the name/path of a YAML config (default `train`); probes: experiments.probes.Probe
        objects that every `run` records (checked here, before anything starts); overrides: config keys."""
        base = load_config(config) if isinstance(config, str) else config
        self.model, self.protocol = model, protocol
        self.config = _config(base, model, protocol, overrides)
        self._net = self._proto = self._specs = None
        self._eng = None      # the engine `run` keeps open (close() releases it)
        self._t = None        # the step the current state is at (None: no state; the next run starts from zero)
        self._saved = {}      # phase name -> the step its saved state is at
        self._batch = None    # the batch size set
        self.probes = check_probes(probes, self.net, self.specs) if probes else ()

    def _with(self, overrides: dict) -> Config:
        return _config(self.config, self.model, self.protocol, overrides) if overrides else self.config

    # ---- the declaration, before anything runs --------------------------------------------------------------
    @property
    def net(self):
        """The model: the one given, or the config's."""
        if self._net is None:
            from cluster.launch import model_from
            self._net = self.model or model_from(self.config)
        return self._net

    @property
    def proto(self):
        """The protocol object, with the config keys it carries set (cluster/launch.protocol_from)."""
        if self._proto is None:
            from cluster.launch import protocol_from
            self._proto = protocol_from(self.config, self.protocol)
        return self._proto

    @property
    def specs(self) -> dict:
        """{node id: NodeSpec}: the logical nodes of the configured engine's partition."""
        if self._specs is None:
            from cluster.launch import node_specs
            self._specs = node_specs(self.config, self.net, self.proto)
        return self._specs

    def summary(self):
        """The partition before any run (experiments/summary.Summary; print it): nodes, their hosts, ports and
        edges, each parameter's owner and replicas. Starts nothing."""
        from experiments.summary import summarize
        return summarize(self.config, self.net, self.proto, self.specs)

    # ---- running step by step -------------------------------------------------------------------------------
    def _engine(self):
        if self._eng is None:
            from cluster.launch import DTYPES, make_engine
            cfg = self.config
            eng = make_engine(cfg, self.net, self.protocol)  # the model built once, for specs and engine alike
            try:
                eng.set_params(self.net.init_params(cfg.seed, DTYPES[cfg.dtype], cfg.init_scale))
            except BaseException:
                eng.close()
                raise
            self._eng = eng
        return self._eng

    def set_params(self, params: dict) -> None:
        """Full parameters {name: tensor} into the nodes (the engine starts, with the config's seeded ones, on the
        first call that needs it)."""
        self._engine().set_params(params)

    def get_params(self) -> dict:
        return self._engine().get_params()

    def set_batch(self, x, y=None) -> None:
        """The batch the next runs see: x (B, inputs), y (B, outputs) or None. The nodes' accumulators start empty;
        the state carries on if B is unchanged (a new input drives it from where it is), else the next run starts
        from zero."""
        x = torch.as_tensor(x)
        eng = self._engine()
        eng.set_batch(x, None if y is None else torch.as_tensor(y))
        eng.begin()
        if self._batch != int(x.shape[0]):
            self._t, self._saved = None, {}
        self._batch = int(x.shape[0])

    def reset(self) -> None:
        """The next run starts from zero, at step 0; the accumulators start empty."""
        self._t, self._saved = None, {}
        if self._eng is not None:
            self._eng.begin()

    @property
    def n_steps(self) -> int:
        """The step the current state is at: steps run since it started from zero (0 before any run)."""
        return self._t or 0

    def run(self, phase, probes=(), x=None, y=None) -> ProbeData:
        """`phase` steps from the current state (the last run's end; zero before any, or after `reset` or a batch
        of another size): an int n runs Phase("free", n) (beta = 0); a protocols.base.Phase runs at its beta
        (kinds, coef: the protocol's rule accumulates as in a program) and continues likewise, unless its `start`
        names a phase run since the batch was set, whose saved state it starts from. x, y: set the batch first
        (set_batch). Records the Simulator's probes and `probes`; returns their ProbeData: {name: (samples, B,
        units) states or edge messages, or a node's accumulators {path: tensor}}, with `.steps` {name: [step of
        each sample]}. The engine stays open for the next run (close(), or use the Simulator in a `with`).
        Continuing is the nodes' rule's `carry` start (a rule whose phases start from a state of their own
        declaring does not continue)."""
        probes = check_probes(self.probes + tuple(probes), self.net, self.specs)
        if isinstance(phase, bool) or not isinstance(phase, (int, Phase)):
            raise ValueError(f"phase: expected a number of steps or a protocols.base.Phase, got {phase!r}")
        if isinstance(phase, int):
            phase = Phase("free", phase)
        if phase.steps < 1:
            raise ValueError(f"steps: a run takes at least one step, got {phase.steps}")
        if x is not None:
            self.set_batch(x, y)
        elif y is not None:
            raise ValueError("y: given without x; pass both, or call set_batch(x, y)")
        if self._batch is None:
            raise ValueError("x: no batch to run on; pass x= (and y=) or call set_batch(x, y) first")
        if phase.start in ("zero", "carry"):
            t0, start = (0, "zero") if self._t is None else (self._t, "carry")
        elif phase.start in self._saved:
            t0, start = self._saved[phase.start], phase.start
        else:
            raise ValueError(f"start: no saved state {phase.start!r}; the phases run since the batch was set: "
                             f"{sorted(self._saved) or 'none'}")
        phase = dataclasses.replace(phase, start=start)
        eng = self._engine()
        res = eng.run_phase(phase, record_states=any(p.accumulators is None for p in probes))
        self._t = t0 + phase.steps
        self._saved[phase.name] = self._t
        acc = eng.accumulators() if any(p.accumulators is not None for p in probes) else None
        return sampled(probes, self.net, t0, phase.steps, res, acc)

    def close(self) -> None:
        """Release the engine `run` kept open (a fabric's host actors); the next run starts a new one from the
        config's initial parameters."""
        eng, self._eng = self._eng, None
        self._t, self._saved, self._batch = None, {}, None
        if eng is not None:
            eng.close()

    def __enter__(self) -> "Simulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the pipelines: the same functions as the CLI ------------------------------------------------------
    def train(self, out: str | None = None, progress: bool = False, resume: bool = False, **overrides) -> dict:
        """Train; `resume` continues the run in `out` from its last checkpoint. Returns what metrics.json holds
        (and the final parameters under `final_params`); out=None writes nothing."""
        from experiments.train import run_train
        if resume and out is None:
            raise ConfigError("out", "resume continues the run in a results folder: name it (out=...)")
        with _folder(out) as folder:
            return run_train(self._with(overrides), folder, progress=progress, resume=resume, model=self.model,
                             protocol=self.protocol)

    def audit(self, out: str | None = None, quiet: bool = True, sets=(), **overrides) -> dict:
        """The gradient and locality audit; returns what audit.json holds. With the config's `replay`, `sets` are
        the command line's --set items that may change a replayed bundle's granularity, transport or engine."""
        from experiments.audit import run_audit
        with _folder(out) as folder:
            return run_audit(self._with(overrides), folder, sets, quiet=quiet, model=self.model,
                             protocol=self.protocol)

    def sweep(self, out: str | None = None, grid=(), sets=(), **overrides) -> dict:
        """`audit` at every point of the grid (["beta=1e-1,1e-2", ...]); returns what sweep.json holds."""
        from experiments.sweep import run_sweep
        with _folder(out) as folder:
            return run_sweep(self._with(overrides), folder, grid, sets)

    def compare(self, out: str | None = None, **overrides) -> dict:
        """Every setting of the config's `compare` section at every grid point, trained per seed, with its
        update-BPTT alignment at the initial weights; returns what metrics.json holds."""
        from experiments.compare import run_compare
        with _folder(out) as folder:
            return run_compare(self._with(overrides), folder)

    def experiment(self, name: str, out: str | None = None, **overrides) -> dict:
        """An experiment a family declares (experiments/families/: its `commands`, e.g. the layered nets' tradeoff);
        returns what its metrics.json holds."""
        cmds = commands()
        if name not in cmds:
            raise ValueError(f"experiment {name!r}: the families declare {sorted(cmds)}")
        with _folder(out) as folder:
            return resolve(cmds[name].run)(self._with(overrides), folder)

    def bench(self, out: str | None = None, **overrides) -> dict:
        from experiments.bench import run_bench
        with _folder(out) as folder:
            return run_bench(self._with(overrides), folder)

    @contextlib.contextmanager
    def engine(self, **overrides):
        """A new configured engine (fabric or in-process), closed on exit (apart from the one `run` keeps)."""
        from cluster.launch import make_engine
        eng = make_engine(self._with(overrides), self.model, self.protocol)
        try:
            yield eng
        finally:
            eng.close()


@contextlib.contextmanager
def _folder(out):
    """`out` as given, or (None) a temporary folder that the pipeline writes and that is removed afterwards."""
    if out is not None:
        yield str(out)
        return
    tmp = tempfile.mkdtemp(prefix="ep-fabric-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
