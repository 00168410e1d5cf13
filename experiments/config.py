"""Run configuration: frozen, typed, validated on load; every error names its field (exit status 2).

`load_config(name_or_path, sets)` reads a YAML file (or `experiments/configs/<name>.yaml`), applies
`--set key=value` overrides (values parsed as YAML; `1e-3` is a float; dotted keys reach sections) and
validates everything before any actor starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field

import yaml

from cluster.runtime.settings import DEFAULTS as FABRIC
from cluster.runtime.transport import LOOPBACK, WIRES
from experiments.errors import ConfigError
from experiments.families import FAMILIES, family_of
from nodes.activations import ACTIVATIONS
from nodes.models import MODEL_NAMES
from nodes.optim import OPTIMIZERS
from protocols import PROTOCOLS

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
RAY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ray_config.yaml")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


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


CHOICES = {
    "model": MODEL_NAMES, "activation": tuple(ACTIVATIONS), "protocol": tuple(PROTOCOLS),
    "granularity": ("layer", "neuron"), "transport": ("zmq", "ray"), "engine": ("fabric", "reference"),
    "dtype": ("float32", "float64"), "optimizer": OPTIMIZERS, "fabric.log": ("full", "counters"),
    "fabric.placement": ("pack", "spread"), "fabric.exchange": ("auto", "messages", "frames"),
}


def parse_value(text: str):
    """--set values are YAML; a number in exponent form (1e-3) is a float."""
    if _FLOAT.match(text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("--set", f"cannot parse value {text!r}: {err}") from None


def _check_type(name: str, value, typ):
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is list:
        ok = isinstance(value, list)
    elif typ is dict:
        ok = isinstance(value, dict)
    elif typ == typing.Optional[str]:
        ok = value is None or isinstance(value, str)
    elif typ == typing.Optional[list]:
        ok = value is None or isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise ConfigError(name, f"expected {getattr(typ, '__name__', typ)}, got {value!r}")
    return value


def _grouped(data: dict) -> dict:
    """A YAML mapping in the sections' form: top-level keys into their sections (`beta` -> learn.beta); a key given
    both ways is an error naming it; an unknown key exits 2 with the closest known one."""
    out = {}
    for k, v in data.items():
        if k in FLAT_SECTIONS or k in NESTED_SECTIONS:
            if not isinstance(v, dict):
                raise ConfigError(str(k), f"is a section: expected a mapping, got {v!r}")
            for kk, vv in v.items():
                if k in FLAT_SECTIONS and FLAT.get(kk) != k:
                    home = FLAT.get(kk) or next((n for n, c in NESTED_SECTIONS.items()
                                                 if kk in {f.name for f in dataclasses.fields(c)}), None)
                    if home:
                        raise ConfigError(f"{k}.{kk}", f"{kk} is a key of section {home}: write {home}.{kk}"
                                                       + (f" or {kk}" if home in FLAT_SECTIONS else ""))
                    _unknown(f"{k}.{kk}", [f"{k}.{n}" for n, sec in FLAT.items() if sec == k])
                if k in FLAT_SECTIONS and kk in out.get(k, {}):
                    raise ConfigError(f"{k}.{kk}", f"given twice (as {kk} and as {k}.{kk})")
                out.setdefault(k, {})[kk] = vv
        elif k in FLAT:
            if k in out.get(FLAT[k], {}):
                raise ConfigError(str(k), f"given twice (as {k} and as {FLAT[k]}.{k})")
            out.setdefault(FLAT[k], {})[k] = v
        else:
            _unknown(str(k), sorted(FLAT) + sorted(NESTED_SECTIONS) + sorted(FLAT_SECTIONS))
    return out


def _unknown(key: str, known) -> None:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(key, f"unknown key; {hint}(every key: docs/reference/config.md)")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
    if cls is Config:
        grouped = _grouped(data)
        return cls(**{k: _build(FLAT_SECTIONS.get(k) or NESTED_SECTIONS[k], v, "" if k in FLAT_SECTIONS else k + ".")
                      for k, v in grouped.items()})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in known:
            close = difflib.get_close_matches(str(k), sorted(known), n=1)
            hint = f"did you mean {prefix + close[0]!r}? " if close else ""
            raise ConfigError(prefix + str(k), f"unknown key; {hint}(known: {', '.join(sorted(known))}; every key: "
                                               f"docs/reference/config.md)")
        typ = hints[k]
        if dataclasses.is_dataclass(typ):
            kwargs[k] = _build(typ, v, prefix + k + ".")
        else:
            kwargs[k] = _check_type(prefix + k, v, typ)
    return cls(**kwargs)


def validate(cfg: Config, model=None, protocol=None) -> Config:
    """Check every field; `model` / `protocol` objects (the Python API) stand in for the named ones."""
    for key, allowed in CHOICES.items():
        if (key == "model" and model is not None) or (key == "protocol" and protocol is not None):
            continue
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ConfigError(key, f"{value!r} is not one of {list(allowed)}")
    if len(cfg.sizes) < 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in cfg.sizes):
        raise ConfigError("sizes", f"need a list of at least two positive integers, got {cfg.sizes!r}")
    fam = family_of(model, cfg.model)
    if fam.validate:
        fam.hook("validate")(cfg, protocol)
    for k in ("T1", "T2", "batch", "eval_batch"):
        if getattr(cfg, k) < 1:
            raise ConfigError(k, f"must be >= 1, got {getattr(cfg, k)}")
    for k in ("epochs", "checkpoint_every", "max_faults"):
        if getattr(cfg, k) < 0:
            raise ConfigError(k, f"must be >= 0, got {getattr(cfg, k)}")
    from protocols import get_protocol
    proto = get_protocol(protocol if protocol is not None else cfg.protocol)
    try:
        proto.validate(cfg.beta, **{k: getattr(cfg, k) for k in (*proto.keys, *proto.checks)})
    except ValueError as err:
        name, _, msg = str(err).partition(": ")
        raise ConfigError(name, msg) from None
    model_name = model.name if model is not None else cfg.model
    if proto.models and model_name not in proto.models:
        raise ConfigError("model", f"protocol {proto.name} runs on {' or '.join(proto.models)}, not {model_name}")
    if not cfg.init_scale > 0:
        raise ConfigError("init_scale", f"must be > 0, got {cfg.init_scale}")
    if not cfg.dt > 0:
        raise ConfigError("dt", f"must be > 0, got {cfg.dt}")
    if cfg.N < 2:
        raise ConfigError("N", f"must be >= 2, got {cfg.N}")
    if not (isinstance(cfg.noise, (int, float)) and cfg.noise >= 0):
        raise ConfigError("noise", f"must be a std >= 0, got {cfg.noise!r}")
    tol = cfg.residual_tol
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0):
        raise ConfigError("residual_tol", f"must be a residual > 0 or null (no gate), got {tol!r}")
    if tol is not None and proto.updates_in_phases:
        raise ConfigError("residual_tol", f"protocol {proto.name} updates inside its phases: a gated batch runs "
                                          f"again on its kept samples, which would apply those updates twice")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError("momentum", f"must be in [0, 1), got {cfg.momentum}")
    if not 0 < cfg.test_fraction < 1:
        raise ConfigError("test_fraction", f"must be in (0, 1), got {cfg.test_fraction}")
    lr = cfg.lr
    if isinstance(lr, list):
        if len(lr) != len(cfg.sizes) - 1 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in lr):
            raise ConfigError("lr", f"expected one number or {len(cfg.sizes) - 1} numbers, got {lr!r}")
    elif isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError("lr", f"expected a number or a list of numbers, got {lr!r}")
    if any(v < 0 for v in cfg.lrs):
        raise ConfigError("lr", f"learning rates must be >= 0, got {lr!r}")
    if cfg.fabric.split < 1:
        raise ConfigError("fabric.split", f"must be >= 1, got {cfg.fabric.split}")
    if cfg.fabric.hosts < 0:
        raise ConfigError("fabric.hosts", f"must be >= 0 (0: one host per logical node), got {cfg.fabric.hosts}")
    if cfg.fabric.wire not in WIRES:
        raise ConfigError("fabric.wire", f"expected one of {WIRES}, got {cfg.fabric.wire!r}")
    if cfg.fabric.wire == "ipc" and cfg.fabric.host not in LOOPBACK:
        raise ConfigError("fabric.wire", f"ipc reaches one machine only; fabric.host {cfg.fabric.host!r} asks for "
                                         f"a cluster (use tcp or auto)")
    if not cfg.fabric.timeout_s > 0:
        raise ConfigError("fabric.timeout_s", f"must be > 0, got {cfg.fabric.timeout_s}")
    if cfg.fabric.curve and cfg.engine == "fabric" and cfg.transport != "zmq":
        raise ConfigError("fabric.curve", f"CURVE secures the ZeroMQ data plane; transport {cfg.transport!r} has none")
    if cfg.fabric.curve:
        import zmq
        if not zmq.has("curve"):
            raise ConfigError("fabric.curve", "this pyzmq's libzmq was built without CURVE (libsodium)")
    _check_runtime(cfg)
    _check_bench(cfg.bench)
    return resolve_data_plane(cfg)


def _check_runtime(cfg) -> None:
    """Where the run goes: seed, device, Ray address, the data plane's bind address, actor resources."""
    import ipaddress
    if cfg.seed < 0:
        raise ConfigError("seed", f"must be >= 0 (a generator seed), got {cfg.seed}")
    dev = cfg.device
    if dev != "cpu" and not re.fullmatch(r"cuda(:\d+)?", dev):
        raise ConfigError("device", f"expected 'cpu', 'cuda' or 'cuda:N', got {dev!r}")
    if dev.startswith("cuda"):
        import torch
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        k = int(dev.split(":")[1]) if ":" in dev else 0
        if k >= n:
            raise ConfigError("device", f"{dev!r}: this machine has {n} CUDA device(s)"
                                        + ("" if n else " (torch sees no GPU); use device=cpu"))
    if cfg.fabric.actor_cpus < 0:
        raise ConfigError("fabric.actor_cpus", f"must be >= 0 (CPUs Ray reserves per actor), got {cfg.fabric.actor_cpus}")
    host = cfg.fabric.host
    if host not in ("localhost", "*"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("fabric.host", f"{host!r} is not an IP address to bind the data plane to (e.g. "
                                             f"127.0.0.1, 0.0.0.0, a node's address)") from None
    addr = cfg.address
    if addr is not None and not (addr in ("auto", "local") or re.fullmatch(r"(ray://)?[\w.\-]+:\d{1,5}", addr)):
        raise ConfigError("address", f"expected null (a local Ray), 'auto', 'local', 'HOST:PORT' or 'ray://HOST:PORT', "
                                     f"got {addr!r}")
    _check_placement(cfg.fabric)


def _check_placement(f) -> None:
    """fabric.resources (custom Ray resources per host actor) and fabric.ports (the tcp data plane's port range)."""
    if not all(isinstance(k, str) and k and k not in ("CPU", "GPU", "memory") and isinstance(v, (int, float))
               and not isinstance(v, bool) and v > 0 for k, v in f.resources.items()):
        raise ConfigError("fabric.resources", f"expected {{name: amount > 0}} of custom Ray resources (CPUs go in "
                                              f"fabric.actor_cpus), got {f.resources!r}")
    p = f.ports
    if p is not None and not (len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
                              and 1024 <= p[0] <= p[1] <= 65535):
        raise ConfigError("fabric.ports", f"expected null or [lo, hi] with 1024 <= lo <= hi <= 65535, got {p!r}")


def on_cluster(cfg) -> bool:
    """The run joins a Ray cluster (an address other than a local Ray)."""
    return cfg.address not in (None, "local")


def resolve_data_plane(cfg):
    """On a cluster a loopback fabric.host cannot be reached from other machines: with fabric.wire=auto it becomes
    0.0.0.0 (every host binds all interfaces and advertises its node's address from Ray, over tcp); an explicit
    wire=ipc is refused; an explicit wire=tcp keeps loopback (a cluster of Ray nodes on one machine)."""
    f = cfg.fabric
    if not (on_cluster(cfg) and cfg.engine == "fabric" and f.host in LOOPBACK) or f.wire == "tcp":
        return cfg
    if f.wire == "ipc":
        raise ConfigError("fabric.wire", f"address {cfg.address!r} joins a Ray cluster, but ipc reaches one machine "
                                         f"only: use fabric.wire=auto or tcp")
    return cfg.replace(fabric=dataclasses.replace(f, host="0.0.0.0"))


def _check_bench(b) -> None:
    def ints(name, vals, lo):
        if not isinstance(vals, list) or not vals or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= lo for v in vals):
            raise ConfigError(f"bench.{name}", f"expected a non-empty list of integers >= {lo}, got {vals!r}")
    if not isinstance(b.sizes, list) or not b.sizes:
        raise ConfigError("bench.sizes", f"expected a non-empty list of layer-size lists, got {b.sizes!r}")
    for sz in b.sizes:
        if not isinstance(sz, list) or len(sz) < 2:
            raise ConfigError("bench.sizes", f"each entry is a list of at least two layer sizes, got {sz!r}")
        ints("sizes", sz, 1)
    ints("batches", b.batches, 1)
    ints("neurons", b.neurons, 1)
    if not isinstance(b.dtypes, list) or not b.dtypes or any(d not in ("float32", "float64") for d in b.dtypes):
        raise ConfigError("bench.dtypes", f"expected a non-empty list of float32 / float64, got {b.dtypes!r}")
    if isinstance(b.neuron_hosts, bool) or not isinstance(b.neuron_hosts, int) or b.neuron_hosts < -1:
        raise ConfigError("bench.neuron_hosts", f"expected -1 (auto), 0 or a number of hosts, got {b.neuron_hosts!r}")
    for k in ("steps", "repeats"):
        if getattr(b, k) < 1:
            raise ConfigError(f"bench.{k}", f"must be >= 1, got {getattr(b, k)}")


def _set_dotted(data: dict, key: str, value) -> None:
    """Set `key` (a top-level key, `section.key` or deeper) in a YAML mapping; a top-level key is one place whichever
    way it is written (`learn.beta` and `beta`), so an override replaces it either way."""
    parts = key.split(".")
    if len(parts) == 2 and FLAT.get(parts[1]) == parts[0]:
        parts = parts[1:]
    if len(parts) == 1 and isinstance(data.get(FLAT.get(parts[0])), dict):
        data[FLAT[parts[0]]].pop(parts[0], None)
    for p in parts[:-1]:
        sub = data.setdefault(p, {})
        if not isinstance(sub, dict):
            raise ConfigError(key, f"{p} is not a section")
        data = sub
    data[parts[-1]] = value


def config_path(name: str) -> str:
    if os.path.isfile(name):
        return name
    path = os.path.join(CONFIG_DIR, name + ".yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))
        raise ConfigError("CONFIG", f"no file {name!r} and no config named {name!r} (known: {', '.join(known)})")
    return path


def load_config(name: str, sets=(), overrides: dict | None = None) -> Config:
    with open(config_path(name)) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError("CONFIG", f"invalid YAML in {name}: {err}") from None
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    for item in sets:
        if "=" not in item:
            raise ConfigError("--set", f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        _set_dotted(data, k.strip(), parse_value(v))
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    if data.get("address", run.get("address")) not in (None, "local"):  # a cluster run: the launcher file's fabric
                                                                         # keys fill the gaps
        fabric = data.setdefault("fabric", {})
        if isinstance(fabric, dict):
            for k, v in cluster_fabric().items():
                fabric.setdefault(k, v)
    return validate(_build(Config, data))


def cluster_fabric(path: str | None = None) -> dict:
    """The fabric section (`metadata.fabric`) of the cluster-launcher file: `path`, else $EP_RAY_CONFIG, else the
    project's ray_config.yaml; {} when the file or the section is absent. Its keys are fabric.* keys."""
    path = path or os.environ.get("EP_RAY_CONFIG") or RAY_CONFIG
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        try:
            launcher = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(path, f"invalid YAML: {err}") from None
    section = (launcher.get("metadata") or {}).get("fabric") or {}
    _build(FabricSection, section, f"{os.path.basename(path)}: metadata.fabric.")  # unknown keys and types
    return dict(section)
