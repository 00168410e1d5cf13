"""Run configuration: read, checked and loaded; every error names its field (exit status 2). The sections the
config is made of are experiments/sections.py.

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

import yaml

from cluster.runtime.transport import LOOPBACK, WIRES
from experiments.errors import ConfigError
from experiments.families import family_of
from experiments.sections import (FLAT, FLAT_SECTIONS, NESTED_SECTIONS, AuditSection, BenchSection, CompareSection,
                                  Config, DataSection, FabricSection, LearnSection, NetSection, RunSection,
                                  TrainSection)
from nodes.activations import ACTIVATIONS
from nodes.models import MODEL_NAMES
from nodes.optim import OPTIMIZERS
from protocols import PROTOCOLS

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
RAY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ray_config.yaml")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")

# the sections (experiments/sections.py), imported from here by the config's readers
__all__ = ["Config", "ConfigError", "FLAT", "FLAT_SECTIONS", "NESTED_SECTIONS", "AuditSection", "BenchSection",
           "CompareSection", "DataSection", "FabricSection", "LearnSection", "NetSection", "RunSection", "TrainSection",
           "CHOICES", "load_config", "validate", "parse_value", "cluster_fabric", "config_path", "on_cluster",
           "resolve_data_plane"]


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
