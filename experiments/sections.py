"""The config's sections: frozen dataclasses, one per concern, and `Config`, made of them.

The keys of `run`, `data`, `net`, `learn`, `train` and `audit` are written at the top level of a YAML file or --set
(`beta`; `learn.beta` works too) and read through in code (`cfg.beta` is `cfg.learn.beta`); `fabric`, `bench`,
`compare` and the families' own sections are nested (`fabric.hosts`). Each key has one default, where it is
declared: here, in a protocol's Settings (protocols/*.py) or in a family's declaration (experiments/families/), whose
keys extend the sections they name. Reading, checking and loading a config: experiments/config.py.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

from cluster.runtime.settings import DEFAULTS as FABRIC
from experiments.errors import ConfigError
from experiments.families import FAMILIES
from protocols import PROTOCOLS


@dataclass(frozen=True)
class FabricSection:
    """`fabric.*`: the runtime's keys; their defaults are the runtime's own (cluster/runtime/settings.py)."""
    split: int = FABRIC.split                # blocks per layer with granularity=layer
    hosts: int = FABRIC.hosts                # Ray actors hosting the logical nodes (round-robin); 0: one per node
    exchange: str = FABRIC.exchange          # data plane: messages (one per port per step), frames (one per host
                                             # pair per step, cluster/runtime/exchange.py), auto: frames when hosts >= 1
    log: str = FABRIC.log                    # message log: "full" records or "counters"
    timeout_s: float = FABRIC.timeout_s      # every wait for a neighbour's message
    actor_cpus: float = FABRIC.actor_cpus    # Ray CPUs reserved per node actor
    host: str = FABRIC.host                  # data-plane bind address (loopback by default; 0.0.0.0 on a cluster)
    curve: bool = FABRIC.curve               # ZeroMQ CURVE on the data plane (encrypted, keys per connection)
    wire: str = FABRIC.wire                  # zmq socket kind: ipc (Unix socket), tcp, or auto (ipc on loopback)
    placement: str = FABRIC.placement        # Ray placement group strategy for the host actors: pack or spread
    resources: dict = field(default_factory=dict)  # custom Ray resources per host actor (e.g. {fabric_slot: 1})
    ports: typing.Optional[list] = None      # [lo, hi]: the tcp data plane binds a port in this range (null: any)
    reuse_hosts: bool = FABRIC.reuse_hosts   # park a cleanly closed fabric's host actors for the next fabric of the
                                             # same shape in this run (cluster/runtime/warm.py); false: cold starts


@dataclass(frozen=True)
class BenchSection:
    sizes: list = field(default_factory=lambda: [[784, 512, 10], [784, 512, 512, 10]])
    batches: list = field(default_factory=lambda: [32, 128, 512])
    dtypes: list = field(default_factory=lambda: ["float32", "float64"])
    neurons: list = field(default_factory=lambda: [4, 8, 16, 32, 64])
    neuron_hosts: int = -1         # neuron fabrics: -1 auto (an actor per node while Ray's process budget allows),
                                   # 0 an actor per node, K > 0 K host actors
    steps: int = 30
    repeats: int = 3


@dataclass(frozen=True)
class CompareSection:
    """`compare` (experiments/compare.py): every setting at every combination of the grid, trained per seed."""
    settings: list = field(default_factory=list)    # [{label: str, set: {key: value, ...}}, ...]
    grid: dict = field(default_factory=dict)        # {key: [value, ...]}: crossed with the settings
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    angle_batches: int = 2                          # training batches the update-BPTT alignment is averaged over
    report_epochs: list = field(default_factory=list)  # epochs whose test accuracy the table shows (the last always)


@dataclass(frozen=True)
class RunSection:
    """How and where a run goes: the engine, the partition, the arithmetic, the machine, the seed."""
    engine: str = "fabric"     # fabric (nodes on Ray host actors) or reference (the same rules in-process)
    granularity: str = FABRIC.granularity
    transport: str = FABRIC.transport
    dtype: str = FABRIC.dtype
    device: str = "cpu"        # torch device of the in-process engine (cpu or cuda)
    address: typing.Optional[str] = None  # Ray address (null: a new local instance on loopback; auto or HOST:PORT: a
                                          # cluster)
    seed: int = 0              # seeds the initial parameters, the data split, the batch order and the noise
    quick: bool = False        # experiments: a short version of the run (fewer steps, seeds or data)


@dataclass(frozen=True)
class DataSection:
    """What the model learns from, and in what portions."""
    dataset: str = "digits"    # the data: digits, mnist5k, random, npz, or a sequence set (experiments/datasets.py)
    data_dir: typing.Optional[str] = None  # where a dataset's files are read from (null: the package's own copy)
    data_path: typing.Optional[str] = None  # dataset=npz: the .npz file with x_train, y_train, x_test, y_test
    test_fraction: float = 0.2  # held-out fraction of the stratified split
    batch: int = 32            # samples per minibatch (audit: the frozen batch)
    eval_batch: int = 1000     # samples per inference call when accuracy is measured


@dataclass(frozen=True)
class NetSection:
    """The model: its kind, its groups' sizes, its units, its step, its initial parameters, its noise; each family
    adds the keys its builders read (experiments/families/)."""
    model: str = "prototypical"  # the model kind (nodes/models.py: every registered builder)
    sizes: list = field(default_factory=lambda: [64, 64, 10])  # unit groups' sizes, input first (a chain: [1, masses,
                                                               # 1]; vector-graph: [inputs, units, outputs])
    activation: str = "sigmoid4"  # the units' activation rho (nodes/activations.py)
    dt: float = 1.0            # the step of the discrete dynamics (an Euler step; a symplectic integrator's h)
    init_scale: float = 1.0        # the seeded initial weights are multiplied by this
    noise: float = 0.0             # std of Gaussian noise on every pre-activation at every step (nodes/noise.py)


@dataclass(frozen=True)
class LearnSection:
    """The learning protocol, its phases, learning rates and optimiser; each protocol adds the settings it declares
    (protocols/*.py: Protocol.Settings) and each family the keys its protocols check (experiments/families/)."""
    protocol: str = "ep-symmetric"  # the learning protocol (protocols/: every module defining PROTOCOL)
    beta: float = 0.1          # the nudging strength (real; a complex protocol's radius |beta|)
    T1: int = 30               # steps of the free phase
    T2: int = 10               # steps of each nudged phase
    lr: typing.Any = 0.1           # one float, or one per layer pair (W0/b0, W1/b1, ...)
    optimizer: str = FABRIC.optimizer
    momentum: float = FABRIC.momentum
    residual_tol: typing.Optional[float] = None  # convergence gate: max |s_T - s_(T-1)| per sample and phase


@dataclass(frozen=True)
class TrainSection:
    """`train`: the passes, the checkpoints, the faults recovered from, the paired baseline."""
    epochs: int = 10           # train: passes over the training set
    checkpoint_every: int = 20     # train: a consistent checkpoint every this many batches (0: at epoch ends only)
    max_faults: int = 10           # train: host-actor deaths recovered from by rollback and replay before giving up
    bptt_baseline: bool = False  # train: a paired BPTT run from the same start (the same batches and optimiser)


@dataclass(frozen=True)
class AuditSection:
    """`audit`: what the gradient audit records beyond its bundle."""
    steps: bool = False        # audit: record the first nudged phase step by step against BPTT (the GDU series)
    forget_free: bool = False      # audit only: the free-phase-memory test (NaN over s0 once the nudged phase moved)
    replay: typing.Optional[str] = None  # audit: re-run another bundle's parameters, batch and settings (an audit.npz)


def _fields_of(classes, where: str) -> list:
    """(name, type, field) of every field of `classes`, once each; a key two of them declare must agree on its type
    and default (its one default)."""
    out, seen = [], {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            if f.name in seen:
                if seen[f.name] != (hints[f.name], default):
                    raise RuntimeError(f"{where}: key {f.name!r} declared twice with different types or defaults")
                continue
            seen[f.name] = (hints[f.name], default)
            kw = {"default": f.default} if f.default_factory is dataclasses.MISSING else \
                {"default_factory": f.default_factory}
            out.append((f.name, hints[f.name], field(**kw)))
    return out


def _extended(base, extras, name: str):
    """The section `base` with the keys its plug-ins declare (protocols' Settings, families' settings)."""
    cls = dataclasses.make_dataclass(name, _fields_of((base, *extras), name), frozen=True)
    cls.__doc__, cls.__module__ = base.__doc__, __name__
    cls.declared_by = {f.name: c for c in reversed((base, *extras)) for f in dataclasses.fields(c)}
    return cls


def _plugged(section: str) -> list:
    return [fam.settings[section] for fam in FAMILIES if section in fam.settings]


# The sections whose keys are written at the top level of a YAML file or --set (`beta`; `learn.beta` works too),
# each key in one section; then the nested ones (`fabric.hosts`), the families' own sections among them.
NetSection = _extended(NetSection, _plugged("net"), "NetSection")
LearnSection = _extended(LearnSection, [p.Settings for p in PROTOCOLS.values() if p.Settings is not None]
                         + _plugged("learn"), "LearnSection")
TrainSection = _extended(TrainSection, _plugged("train"), "TrainSection")
FLAT_SECTIONS = {"run": RunSection, "data": DataSection, "net": NetSection, "learn": LearnSection,
                 "train": TrainSection, "audit": AuditSection}
NESTED_SECTIONS = {"fabric": FabricSection, "bench": BenchSection, "compare": CompareSection,
                   **{name: cls for fam in FAMILIES for name, cls in fam.sections.items()}}


def _flat_keys() -> dict:
    """{top-level key: its section}; a key in two sections, or named like a section, is a declaration error."""
    out = {}
    for sec, cls in FLAT_SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name in out or f.name in FLAT_SECTIONS or f.name in NESTED_SECTIONS:
                raise RuntimeError(f"config: key {f.name!r} of section {sec} is declared twice")
            out[f.name] = sec
    return out


FLAT = _flat_keys()


class _Sections:
    """What every Config has beside its sections: the top-level keys read through (cfg.beta is cfg.learn.beta),
    `replace`, and the flat form users write (`to_dict`)."""

    def __getattr__(self, name):
        section = FLAT.get(name)
        if section is None:
            raise AttributeError(f"config has no key {name!r}")
        return getattr(getattr(self, section), name)

    @property
    def lrs(self) -> list:
        n = len(self.sizes) - 1
        return [float(self.lr)] * n if isinstance(self.lr, (int, float)) else [float(v) for v in self.lr]

    def replace(self, **changes):
        """A copy with `changes` (top-level keys or whole sections), not validated (as dataclasses.replace)."""
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        by_section = {}
        for k, v in changes.items():
            if k in sections:
                sections[k] = v
            elif k in FLAT:
                by_section.setdefault(FLAT[k], {})[k] = v
            else:
                raise ConfigError(k, "unknown key")
        for sec, ch in by_section.items():
            sections[sec] = dataclasses.replace(sections[sec], **ch)
        return type(self)(**sections)

    def to_dict(self) -> dict:
        """The form a YAML file has: the top-level keys, then the nested sections."""
        out = {}
        for sec in FLAT_SECTIONS:
            out.update(dataclasses.asdict(getattr(self, sec)))
        for sec in NESTED_SECTIONS:
            out[sec] = dataclasses.asdict(getattr(self, sec))
        return out


Config = dataclasses.make_dataclass(
    "Config", [(name, cls, field(default_factory=cls)) for name, cls in {**FLAT_SECTIONS, **NESTED_SECTIONS}.items()],
    bases=(_Sections,), frozen=True)
Config.__module__ = __name__
Config.__doc__ = ("A run's settings: typed sections of frozen dataclasses; the keys of the flat sections read through "
                  "(cfg.beta is cfg.learn.beta).")
