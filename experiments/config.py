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
from nodes.activations import ACTIVATIONS
from nodes.hamiltonian import HAMILTONIAN_MODELS, INTEGRATORS
from nodes.layered import FEEDBACK_INITS
from nodes.models import MODEL_NAMES
from nodes.optim import OPTIMIZERS
from protocols import PROTOCOLS
from protocols.base import setting_default

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
RAY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ray_config.yaml")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def protocol_default(key: str):
    """A carried protocol setting's default: the one its protocols' Settings declare (protocols/*.py)."""
    return setting_default(key, PROTOCOLS.values())


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
class TradeoffSection:
    """`tradeoff` (experiments/tradeoff.py): the settings trained and the seeds."""
    cep_lr: list = field(default_factory=list)      # cep at each learning rate (a number or one per layer pair)
    cvf_angle: list = field(default_factory=list)   # cvf at each feedback angle psi (degrees)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    angle_batches: int = 4                          # training batches the update-BPTT angle is averaged over


@dataclass(frozen=True)
class CompareSection:
    """`compare` (experiments/compare.py): every setting at every combination of the grid, trained per seed."""
    settings: list = field(default_factory=list)    # [{label: str, set: {key: value, ...}}, ...]
    grid: dict = field(default_factory=dict)        # {key: [value, ...]}: crossed with the settings
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    angle_batches: int = 2                          # training batches the update-BPTT alignment is averaged over
    report_epochs: list = field(default_factory=list)  # epochs whose test accuracy the table shows (the last always)


@dataclass(frozen=True)
class EchoSection:
    """The Hamiltonian echo experiments (experiments/oscillators.py)."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])   # hru-sequence: one RHEL and one BPTT run per seed
    audit_eps: float = 1e-4                                  # hru-sequence: eps of each seed's one-batch audit


@dataclass(frozen=True)
class Config:
    model: str = "prototypical"  # the model kind (nodes/models.py: every registered builder)
    sizes: list = field(default_factory=lambda: [64, 64, 10])  # unit groups' sizes, input first (a chain: [1, masses,
                                                               # 1]; vector-graph: [inputs, units, outputs])
    activation: str = "sigmoid4"  # the units' activation rho (nodes/activations.py)
    protocol: str = "ep-symmetric"  # the learning protocol (protocols/: every module defining PROTOCOL)
    beta: float = 0.1          # the nudging strength (real; holomorphic EP's radius |beta|)
    T1: int = 30               # steps of the free phase
    T2: int = 10               # steps of each nudged phase
    dt: float = 1.0            # the step of the discrete dynamics (an Euler step; the leapfrog's h)
    N: int = protocol_default("N")  # hep: points on the circle of complex beta
    periods: int = protocol_default("periods")  # hep-osc: periods of the N-segment oscillation
    batch: int = 32            # samples per minibatch (audit: the frozen batch)
    seed: int = 0              # seeds the initial parameters, the data split, the batch order and the noise
    granularity: str = FABRIC.granularity
    transport: str = FABRIC.transport
    engine: str = "fabric"     # fabric (nodes on Ray host actors) or reference (the same rules in-process)
    dtype: str = FABRIC.dtype
    lr: typing.Any = 0.1           # one float, or one per layer pair (W0/b0, W1/b1, ...)
    optimizer: str = FABRIC.optimizer
    momentum: float = FABRIC.momentum
    epochs: int = 10           # train: passes over the training set
    dataset: str = "digits"    # the data: digits, mnist5k, random, npz, or a sequence set (experiments/datasets.py)
    data_dir: typing.Optional[str] = None  # where a dataset's files are read from (null: the package's own copy)
    data_path: typing.Optional[str] = None  # dataset=npz: the .npz file with x_train, y_train, x_test, y_test
    test_fraction: float = 0.2  # held-out fraction of the stratified split
    init_scale: float = 1.0        # the seeded initial weights are multiplied by this
    feedback_init: str = "transpose"  # asymmetric nets: B{n} starts as W{n}^T, "independent", or "none" (feed-forward)
    angle: float = 0.0             # prototypical-asym: each B entry's sign flipped with probability (1 - cos psi) / 2
    random_sign: bool = protocol_default("random_sign")  # vf / cvf: the sign of beta drawn per batch (as
                                                         # ep-random-sign does)
    eps: float = 0.01              # rhel / heb: the echo's nudging strength (each copy's nudge is +-eps or 0)
    T: int = 100                   # Hamiltonian models: the sequence length, the number of forward (and echo) steps
    sided: str = protocol_default("sided")  # rhel / heb: echo copies nudged at +eps and -eps ("two") or at 0 and +eps
                                            # ("one")
    nudge: str = protocol_default("nudge")  # rhel / heb: the kicks' cotangent at the copies' reference state, or each
                                            # copy's own
    integrator: str = "leapfrog"   # Hamiltonian models: leapfrog (position Verlet, force at the half step); the
                                   # ablations start-force and euler are not time-reversible (refused by rhel, heb)
    damping: float = 0.0           # Hamiltonian models: a friction -damping * pi (dissipative: refused by rhel, heb)
    steps: bool = False        # audit: record the first nudged phase step by step against BPTT (the GDU series)
    noise: float = 0.0             # std of Gaussian noise on every pre-activation at every step (nodes/noise.py)
    residual_tol: typing.Optional[float] = None  # convergence gate: max |s_T - s_(T-1)| per sample and phase
    forget_free: bool = False      # audit only: the free-phase-memory test (NaN over s0 once the nudged phase moved)
    replay: typing.Optional[str] = None  # audit: re-run another bundle's parameters, batch and settings (an audit.npz)
    address: typing.Optional[str] = None  # Ray address (null: a new local instance on loopback; auto or HOST:PORT: a
                                          # cluster)
    bptt_baseline: bool = False  # train (Hamiltonian models): a paired BPTT run from the same start
    checkpoint_every: int = 20     # train: a consistent checkpoint every this many batches (0: at epoch ends only)
    max_faults: int = 10           # train: host-actor deaths recovered from by rollback and replay before giving up
    eval_batch: int = 1000     # samples per inference call when accuracy is measured
    quick: bool = False        # experiments: a short version of the run (fewer steps, seeds or data)
    device: str = "cpu"        # torch device of the in-process engine (cpu or cuda)
    fabric: FabricSection = field(default_factory=FabricSection)
    bench: BenchSection = field(default_factory=BenchSection)
    tradeoff: TradeoffSection = field(default_factory=TradeoffSection)
    compare: CompareSection = field(default_factory=CompareSection)
    echo: EchoSection = field(default_factory=EchoSection)

    @property
    def lrs(self) -> list:
        n = len(self.sizes) - 1
        return [float(self.lr)] * n if isinstance(self.lr, (int, float)) else [float(v) for v in self.lr]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model": MODEL_NAMES, "integrator": INTEGRATORS, "activation": tuple(ACTIVATIONS), "protocol": tuple(PROTOCOLS),
    "granularity": ("layer", "neuron"), "transport": ("zmq", "ray"), "engine": ("fabric", "reference"),
    "dtype": ("float32", "float64"), "optimizer": OPTIMIZERS, "fabric.log": ("full", "counters"),
    "fabric.placement": ("pack", "spread"), "fabric.exchange": ("auto", "messages", "frames"),
    "feedback_init": FEEDBACK_INITS,
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


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a mapping, got {data!r}")
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
    hamiltonian = (model.echo is not None) if model is not None else cfg.model in HAMILTONIAN_MODELS
    if hamiltonian:
        from experiments.sequences import validate_sequences
        validate_sequences(cfg, protocol)
    if cfg.model == "vector-graph" and (len(cfg.sizes) != 3 or not cfg.sizes[2] < cfg.sizes[1]):
        raise ConfigError("sizes", f"model vector-graph takes [inputs, units, outputs] with outputs < units, got "
                          f"{cfg.sizes!r}")
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
    if not 0.0 <= cfg.angle <= 180.0:
        raise ConfigError("angle", f"must be in [0, 180] degrees, got {cfg.angle}")
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
    return dataclasses.replace(cfg, fabric=dataclasses.replace(f, host="0.0.0.0"))


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
    parts = key.split(".")
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
    if data.get("address") not in (None, "local"):  # a cluster run: the launcher file's fabric keys fill the gaps
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
