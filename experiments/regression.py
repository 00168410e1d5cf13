"""Bitwise regression harness: record the results of every shipped config, and compare two recordings.

    python -m experiments.regression record DIR [--only NAME ...] [--timeout S]
    python -m experiments.regression compare BEFORE AFTER [--tol REL] [--ignore KEY ...]
    python -m experiments.regression export DIR FILE
    python -m experiments.regression list

`record` runs, one subprocess each and through the public command line only (`python -m experiments audit|train
CONFIG --set key=value ... --out OUT`), a quick audit of every shipped config in experiments/configs/ that `audit`
accepts and one short training epoch of a few (RUNS below: small batches, few steps T1 / T2 or a short sequence T,
one epoch, float64 where the config allows it, fixed seeds). The configs it does not run are listed in SKIPPED
with the reason, and a shipped config in neither list is reported (and noted in the manifest). Every subprocess
runs with the settings of RUN_ENV (one BLAS / OpenMP thread, a fixed hash seed), so that its floating-point
reductions do not depend on the machine's core count or load.

Per run, DIR/<run>/ keeps the files that hold results: an audit's `audit.npz` (the pinned bundle) and `audit.json`;
a training's `metrics.json`, its final `checkpoint.npz` and `lineage.json` (each node's update hashes), and the
subprocess's output (`log.txt`). DIR/manifest.json holds, per run, the command line (the output folder written
`{out}`), its exit status and seconds, per array its file, dtype, shape and the sha256 of its bytes, and per metric
(every scalar of the run's JSON files, flattened to dotted keys) its value. The arrays are those of audit.npz; the
decoded node states of checkpoint.npz (`node/<id>/param/...`, `node/<id>/opt/...`, `node/<id>/lineage`, read
from the checkpoint's msgpack {name: [dtype, shape, raw bytes]} form); lineage.json's per-node [batch, update hash]
lists; and the parameter lists of a Hamiltonian training's metrics.json (`final_params/...`). A recording keeps the
npz and JSON files, so `compare` reads the exact values back.

`compare` takes two recordings (a folder with manifest.json, or a manifest file alone: then only hashes and
metric values are compared) and prints, per run and per array, `bitwise` when the dtype, shape and hash agree,
else the max abs and max relative difference (and the count of differing elements), and per metric whether it is
equal. Runs, arrays or metrics present in one recording only are reported. Exit status: 0 when every array and
every metric is bitwise equal (or, with `--tol REL`, within that relative bound, reported as such), 1 otherwise.
Keys that vary between two runs of the same code by nature (timings, wall-clock, dates, paths, memory bytes) are
excluded by name (EXCLUDED below, with the reason); `--ignore KEY` excludes more at compare time, said in the
output.

`export` writes a recording's manifest compactly, without the array files' names (tests/regression_manifest.json
is the baseline's, kept in the repository): `compare FILE AFTER` then checks hashes and metric values only.
Bitwise equality is expected on the same machine and environment (the manifest names its versions); across
machines, BLAS kernels may round differently.

Typical use: `record /path/before` on the code before a change, `record /path/after` on the changed code, then
`compare /path/before /path/after`. A full recording takes 7 to 15 minutes on 2 shared cores, most of it each
run's start-up (interpreter, torch, a Ray instance per fabric run). `record --only NAME ...` re-runs some runs into
an existing recording.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "configs")
MANIFEST = "manifest.json"
FORMAT = 1

# Environment of every recorded subprocess: one BLAS / OpenMP thread (a reduction's order does not depend on the
# machine's cores), a fixed hash seed (no set- or dict-order that depends on string hashing), Ray's log dedup off.
RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "RAY_DEDUP_LOGS": "0"}

# Flattened-key components excluded from the comparison, with the reason: they vary between two runs of the same
# code (or name where a run was written) and say nothing about its results.
EXCLUDED = {
    "seconds": "wall-clock time of an epoch (train metrics, checkpoint tally)",
    "train_seconds": "wall-clock time of an epoch's training batches",
    "wall_s": "wall-clock time (audit of a Hamiltonian model, echo training epochs)",
    "memory": "bytes held in memory by the nodes and by BPTT's autograd (allocator-dependent)",
    "node_kept_bytes": "bytes held in memory by a node after a batch",
    "bptt_saved_bytes": "bytes BPTT's autograd keeps",
    "date": "calendar date",
    "time": "wall-clock time",
    "created": "when the recording was made",
    "path": "a file-system path",
    "out": "the output folder",
    "data_dir": "a file-system path",
}

# The quick settings shared by the audits of layered nets (the audit itself runs in float64).
LAYERED = ("dtype=float64", "batch=4")


def _run(name, command, config, sets=(), family="", note=""):
    return {"name": name, "command": command, "config": config, "sets": list(sets), "family": family, "note": note}


# Every run: a name (its folder in DIR), the CLI command, the shipped config, the --set overrides. The engine is
# the config's own (fabric unless the config says reference) unless a --set says otherwise; at least one fabric
# run per model family.
RUNS = [
    # ---- audits: energy ----
    _run("audit-audit", "audit", "audit", (*LAYERED, "T1=60", "T2=20", "granularity=neuron", "fabric.hosts=2"),
         "energy", "neuron granularity on 2 host actors"),
    _run("audit-gdu-energy-toy", "audit", "gdu-energy-toy", ("T1=60", "T2=10"), "energy", "steps=true (GDU series)"),
    _run("audit-hep-toy", "audit", "hep-toy", ("T1=60", "T2=40"), "energy"),
    _run("audit-eb1h-mnist", "audit", "eb1h-mnist", (*LAYERED, "T1=20", "T2=6", "engine=reference", "dataset=random"),
         "energy", "MNIST files absent here: random data sized from the net"),
    # ---- audits: prototypical ----
    _run("audit-train", "audit", "train", (*LAYERED, "T1=15", "T2=5"), "prototypical"),
    _run("audit-cep-digits", "audit", "cep-digits", (*LAYERED, "T1=15", "T2=6"), "prototypical"),
    _run("audit-cep-tradeoff", "audit", "cep-tradeoff", (*LAYERED, "T1=15", "T2=6"), "prototypical"),
    _run("audit-cep1h-mnist5k", "audit", "cep1h-mnist5k", (*LAYERED, "T1=15", "T2=6", "engine=reference"),
         "prototypical"),
    _run("audit-ep1h-mnist5k", "audit", "ep1h-mnist5k", (*LAYERED, "T1=15", "T2=5", "engine=reference"),
         "prototypical"),
    _run("audit-p1h-mnist", "audit", "p1h-mnist", (*LAYERED, "T1=15", "T2=6", "engine=reference", "dataset=random"),
         "prototypical", "MNIST files absent here: random data sized from the net"),
    _run("audit-p2h-mnist", "audit", "p2h-mnist", (*LAYERED, "T1=20", "T2=6", "engine=reference", "dataset=random"),
         "prototypical", "MNIST files absent here: random data sized from the net"),
    _run("audit-pmlp-mnist", "audit", "pmlp-mnist", (*LAYERED, "T1=15", "T2=5", "engine=reference",
                                                      "dataset=random"),
         "prototypical", "MNIST files absent here: random data sized from the net"),
    _run("audit-pmlp-mnist5k", "audit", "pmlp-mnist5k", (*LAYERED, "T1=15", "T2=5", "engine=reference"),
         "prototypical"),
    _run("audit-sweep", "audit", "sweep", (*LAYERED, "T1=30", "T2=20"), "prototypical"),
    _run("audit-hep-depth", "audit", "hep-depth", (*LAYERED, "T1=20", "T2=8"), "prototypical"),
    _run("audit-hep-depth-act", "audit", "hep-depth-act", (*LAYERED, "T1=20", "T2=8"), "prototypical"),
    _run("audit-hep-noise", "audit", "hep-noise", (*LAYERED, "T1=20", "T2=10"), "prototypical"),
    _run("audit-hep-noise-mnist5k", "audit", "hep-noise-mnist5k", (*LAYERED, "T1=15", "T2=10", "noise=0.04"),
         "prototypical", "with noise 0.04 (the config's noisy grid point)"),
    # ---- audits: prototypical-asym ----
    _run("audit-cvf-digits", "audit", "cvf-digits", (*LAYERED, "T1=15", "T2=6"), "prototypical-asym"),
    _run("audit-cvf1h-mnist5k", "audit", "cvf1h-mnist5k", (*LAYERED, "T1=15", "T2=6", "engine=reference"),
         "prototypical-asym"),
    # ---- audits: vector-field, vector-graph ----
    _run("audit-aep-feedforward-digits", "audit", "aep-feedforward-digits", (*LAYERED, "T1=15", "T2=15"),
         "vector-field"),
    _run("audit-compare-nonconservative", "audit", "compare-nonconservative", (*LAYERED, "T1=20", "T2=10"),
         "vector-field"),
    _run("audit-compare-nonconservative-mnist5k", "audit", "compare-nonconservative-mnist5k",
         (*LAYERED, "T1=20", "T2=10", "protocol=dyadic"), "vector-field", "protocol dyadic (one of its settings)"),
    _run("audit-toy-nonconservative", "audit", "toy-nonconservative", ("T1=2000", "T2=2000"), "vector-graph",
         "replay of the shipped bundle, 2,000 of its 20,000 steps per phase"),
    _run("audit-toy-nonconservative-neuron", "audit", "toy-nonconservative",
         ("T1=100", "T2=100", "engine=fabric", "granularity=neuron", "fabric.hosts=2"), "vector-graph",
         "replay on the neuron fabric, 2 host actors"),
    # ---- audits: Hamiltonian ----
    _run("audit-two-mass", "audit", "two-mass", ("T=200",), "hamiltonian", "neuron fabric"),
    _run("audit-rhel-two-mass", "audit", "rhel-two-mass", ("T=200",), "hamiltonian", "neuron fabric"),
    _run("audit-chain", "audit", "chain", ("T=30", "dt=0.5", "batch=2"), "hamiltonian",
         "neuron fabric, 4 host actors; dt 0.5 so that 30 steps reach the last mass"),
    _run("audit-rhel-chain-logcosh", "audit", "rhel-chain-logcosh", ("T=40", "dt=0.5", "batch=2"), "hamiltonian",
         "dt 0.5 so that 40 steps reach the last mass"),
    _run("audit-hru-sequence", "audit", "hru-sequence", ("T=20", "batch=4", "dataset=synthetic-motion"),
         "hamiltonian", "aeon's BasicMotions absent here: the synthetic stand-in"),
    # ---- audits: clamped (contrastive and coupled learning) ----
    _run("audit-cpl-digits", "audit", "cpl-digits", (*LAYERED, "T1=15", "T2=6"), "prototypical",
         "coupled learning, eta = beta"),
    _run("audit-cl-digits", "audit", "cl-digits", (*LAYERED, "T1=15", "T2=6", "engine=reference"), "prototypical",
         "contrastive learning"),
    # ---- one short training epoch ----
    _run("train-train", "train", "train", ("epochs=1", "T1=10", "T2=4", "batch=64", "checkpoint_every=0"),
         "prototypical", "shipped float32"),
    _run("train-cep-digits", "train", "cep-digits",
         ("epochs=1", "T1=10", "T2=4", "batch=64", "dtype=float64", "checkpoint_every=0"), "prototypical"),
    _run("train-cvf-digits", "train", "cvf-digits",
         ("epochs=1", "T1=10", "T2=4", "batch=64", "dtype=float64", "engine=reference", "checkpoint_every=0"),
         "prototypical-asym"),
    _run("train-compare-nonconservative", "train", "compare-nonconservative",
         ("epochs=1", "T1=10", "T2=6", "batch=64", "dtype=float64", "bptt_baseline=true", "residual_tol=0.5",
          "checkpoint_every=0"),
         "vector-field", "paired BPTT baseline, convergence gate"),
    _run("train-two-mass", "train", "two-mass", ("epochs=2", "T=200"), "hamiltonian", "neuron fabric"),
    _run("train-hru-sequence", "train", "hru-sequence",
         ("epochs=1", "T=20", "batch=40", "dataset=synthetic-motion", "engine=reference", "bptt_baseline=true"),
         "hamiltonian", "synthetic stand-in, paired BPTT baseline"),
]

# Shipped configs not run, and why.
SKIPPED = {
    "bench": "timings only (the `bench` command): no result to compare; its 784-wide sizes do not fit the default "
             "dataset of an audit",
}


# ---- record ------------------------------------------------------------------------------------------------------
def command_line(run: dict, out: str) -> list:
    argv = [sys.executable, "-m", "experiments", run["command"], run["config"]]
    for s in run["sets"]:
        argv += ["--set", s]
    return argv + ["--out", out]


def shown(argv: list) -> list:
    """The command line as stored: `python` for the interpreter."""
    return ["python", *argv[1:]]


def engine_of(run: dict) -> str:
    for s in reversed(run["sets"]):
        if s.startswith("engine="):
            return s.split("=", 1)[1]
    import yaml
    with open(os.path.join(CONFIG_DIR, run["config"] + ".yaml")) as f:
        return (yaml.safe_load(f) or {}).get("engine", "fabric")


RESULT_FILES = {"audit": ("audit.npz", "audit.json"), "train": ("metrics.json", "checkpoint.npz", "lineage.json")}


def record(out_dir: str, only=(), timeout: float = 600.0) -> int:
    os.makedirs(out_dir, exist_ok=True)
    runs = [r for r in RUNS if not only or r["name"] in only or r["config"] in only]
    if only and not runs:
        print(f"no run named {', '.join(only)} (see `list`)", file=sys.stderr)
        return 2
    shipped = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
    unlisted = [c for c in shipped if c not in SKIPPED and c not in {r["config"] for r in RUNS}]
    for c in unlisted:
        print(f"warning: shipped config {c} is neither run nor skipped (add it to RUNS or SKIPPED)", file=sys.stderr)
    path = os.path.join(out_dir, MANIFEST)
    manifest = _read_manifest(path) if only and os.path.isfile(path) else None
    if manifest is None:
        manifest = {"format": FORMAT, "runs": {}}
    manifest.update(created=datetime.datetime.now().isoformat(timespec="seconds"), environment=_environment(),
                    skipped=SKIPPED, unlisted=unlisted, excluded=EXCLUDED)
    env = {**os.environ, **RUN_ENV}
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated recording stops its current run cleanly too
    failed, t_all = [], time.time()
    for i, run in enumerate(runs):
        dest = os.path.join(out_dir, run["name"])
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        with tempfile.TemporaryDirectory(prefix="regression-") as tmp:
            out = os.path.join(tmp, "out")
            argv = command_line(run, out)
            t0 = time.time()
            rc, log = _call(argv, env, timeout)
            seconds = time.time() - t0
            with open(os.path.join(dest, "log.txt"), "w") as f:
                f.write(log)
            for name in RESULT_FILES[run["command"]]:
                if os.path.isfile(os.path.join(out, name)):
                    shutil.copy2(os.path.join(out, name), os.path.join(dest, name))
        entry = {"config": run["config"], "command": shown(command_line(run, "{out}")), "engine": engine_of(run),
                 "family": run["family"], "note": run["note"], "rc": rc, "seconds": round(seconds, 2)}
        arrays, metrics = read_results(dest)
        entry["files"] = sorted(f for f in os.listdir(dest) if f != "log.txt")
        entry["arrays"] = {k: describe(v) | {"file": f} for k, (f, v) in arrays.items()}
        entry["metrics"] = metrics
        manifest["runs"][run["name"]] = entry
        status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {os.path.join(dest, 'log.txt')})"
        if rc != 0:
            failed.append(run["name"])
            print(log[-2000:], file=sys.stderr)
        print(f"[{i + 1}/{len(runs)}] {run['name']}: {entry['engine']}, {seconds:.1f} s, {len(arrays)} arrays, "
              f"{len(metrics)} metrics: {status}", flush=True)
        _write_manifest(path, manifest)  # after every run: an interrupted recording keeps what it did
    total = round(time.time() - t_all, 1)
    if not only:
        manifest["seconds"] = total
    _write_manifest(path, manifest)
    print(f"recorded {len(runs) - len(failed)} of {len(runs)} runs in {total:.0f} s -> {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _call(argv: list, env: dict, timeout: float) -> tuple:
    """(exit status, output) of one run; -1 when it ran past `timeout`. An interrupted or timed-out run gets SIGINT
    first (the CLI then shuts its Ray instance down), SIGKILL only if it has not ended 30 s later."""
    with open(os.devnull) as devnull, tempfile.TemporaryFile() as log:
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=devnull, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = p.wait(timeout)
        except BaseException as err:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if not isinstance(err, subprocess.TimeoutExpired):
                raise
            rc = -1
        log.seek(0)
        text = log.read().decode(errors="replace")
    return rc, text + (f"\ntimed out after {timeout} s\n" if rc == -1 else "")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
           "run_env": RUN_ENV}
    for mod in ("torch", "ray", "zmq"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
    except Exception:
        env["commit"] = None
    return env


def _write_manifest(path: str, manifest: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def _read_manifest(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---- what a run's files hold -------------------------------------------------------------------------------------
def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def describe(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": sha256(a)}


def _npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _unpack_state(blob: np.ndarray):
    """A node's checkpoint state, msgpack bytes {name: [dtype, shape, raw]}, as {name: array}; None when it is
    not in that form (then the raw bytes are compared)."""
    try:
        import msgpack
        flat = msgpack.unpackb(blob.tobytes())
        return {k: np.frombuffer(raw, dtype=np.dtype(dt)).reshape(shape) for k, (dt, shape, raw) in flat.items()}
    except Exception:
        return None


def _checkpoint_arrays(path: str) -> tuple:
    """(arrays, info): the decoded node (and baseline) states of a checkpoint, and its JSON `info`."""
    arrays, info = {}, {}
    for k, v in _npz(path).items():
        if k == "info":
            info = json.loads(str(v))
            continue
        state = _unpack_state(v) if k.startswith(("node/", "baseline/")) else None
        if state is None:
            arrays[k] = v
        else:
            arrays.update({f"{k}/{name}": a for name, a in state.items()})
    return arrays, info


def flatten(obj, prefix: str = "") -> dict:
    """Every scalar of a JSON document under its dotted key (list items by index)."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = obj
    return out


def excluded(key: str, extra=()) -> bool:
    parts = key.replace("/", ".").split(".")
    return any(p in EXCLUDED or p in extra for p in parts)


def read_results(run_dir: str, extra_excluded=()) -> tuple:
    """({array key: (file, array)}, {metric key: value}) of a recorded run's files."""
    arrays, metrics = {}, {}

    def add_arrays(fname, d):
        arrays.update({k: (fname, v) for k, v in d.items() if not excluded(k, extra_excluded)})

    def add_metrics(prefix, doc):
        metrics.update({f"{prefix}:{k}": v for k, v in flatten(doc).items() if not excluded(k, extra_excluded)})

    for fname in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else ():
        path = os.path.join(run_dir, fname)
        if fname == "audit.npz":
            add_arrays(fname, _npz(path))
        elif fname == "checkpoint.npz":
            a, info = _checkpoint_arrays(path)
            add_arrays(fname, a)
            add_metrics("checkpoint.info", info)
        elif fname == "lineage.json":
            with open(path) as f:
                doc = json.load(f)
            add_arrays(fname, {f"lineage/{k}": np.asarray(v, dtype=np.int64).reshape(-1, 2) for k, v in doc.items()})
        elif fname.endswith(".json"):
            with open(path) as f:
                doc = json.load(f)
            lists = {k: doc.pop(k) for k in ("final_params", "bptt_final_params") if isinstance(doc.get(k), dict)}
            add_arrays(fname, {f"{k}/{n}": np.asarray(v, dtype=np.float64) for k, d in lists.items()
                               for n, v in d.items()})
            add_metrics(fname[:-5], doc)
    return arrays, metrics


# ---- compare -----------------------------------------------------------------------------------------------------
def diff(a: np.ndarray, b: np.ndarray) -> dict:
    """Max abs and max relative (|a - b| / max(|a|, |b|)) differences, and how many elements differ; NaN in the
    same places counts as equal."""
    if a.dtype.kind in "USO" or b.dtype.kind in "USO" or a.shape != b.shape:
        return {"comparable": False}
    x, y = a.astype(np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64), \
        b.astype(np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64)
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    same = (x == y) | (nan_x & nan_y)
    d = np.where(same, 0.0, np.abs(x - y))
    d = np.where(nan_x ^ nan_y, np.inf, d)
    scale = np.maximum(np.abs(x), np.abs(y))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(same, 0.0, np.where(scale > 0, d / scale, np.inf))
    rel = np.where(np.isnan(rel), np.inf, rel)
    return {"comparable": True, "max_abs": float(d.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0)),
            "n_diff": int((~same).sum()), "n": int(x.size)}


def _load_side(path: str) -> tuple:
    """(manifest, folder or None): a recording folder, or a manifest file alone (hashes and metrics only)."""
    if os.path.isdir(path):
        mpath = os.path.join(path, MANIFEST)
        if not os.path.isfile(mpath):
            raise SystemExit(f"error: {path} holds no {MANIFEST}")
        return _read_manifest(mpath), path
    if os.path.isfile(path):
        return _read_manifest(path), None
    raise SystemExit(f"error: no recording at {path}")


def _same_value(u, v, tol: float | None) -> tuple:
    """(equal, within_tol, text) for two metric values."""
    if u == v or (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)):
        return True, True, "equal"
    num = (int, float)
    if isinstance(u, num) and isinstance(v, num) and not isinstance(u, bool) and not isinstance(v, bool):
        d = abs(u - v)
        rel = d / max(abs(u), abs(v)) if max(abs(u), abs(v)) > 0 else math.inf
        ok = tol is not None and rel <= tol
        return False, ok, f"{u!r} -> {v!r} (abs {d:.3e}, rel {rel:.3e})"
    return False, False, f"{u!r} -> {v!r}"


def compare(before: str, after: str, tol: float | None = None, ignore=(), verbose: bool = True) -> int:
    ma, dir_a = _load_side(before)
    mb, dir_b = _load_side(after)
    ra, rb = ma.get("runs", {}), mb.get("runs", {})
    ignore = tuple(ignore)
    bad = within = 0
    lines = []
    say = lines.append
    if ignore:
        say(f"ignoring keys also: {', '.join(ignore)} (--ignore)")
    for name in sorted(set(ra) - set(rb)):
        say(f"run {name}: only in {before}")
        bad += 1
    for name in sorted(set(rb) - set(ra)):
        say(f"run {name}: only in {after}")
        bad += 1
    for name in [n for n in ra if n in rb]:
        a, b = ra[name], rb[name]
        head = f"run {name}"
        if a.get("command") != b.get("command"):
            say(f"{head}: note: the command lines differ: {' '.join(a.get('command', []))}  vs  "
                f"{' '.join(b.get('command', []))}")
        if a.get("rc") != b.get("rc"):
            say(f"{head}: exit status {a.get('rc')} -> {b.get('rc')}")
            bad += 1
        run_bad = 0
        va = vb = None
        arr_a = {k: v for k, v in a.get("arrays", {}).items() if not excluded(k, ignore)}
        arr_b = {k: v for k, v in b.get("arrays", {}).items() if not excluded(k, ignore)}
        for key in sorted(set(arr_a) | set(arr_b)):
            if key not in arr_b or key not in arr_a:
                say(f"{head}: array {key}: only in {before if key in arr_a else after}")
                run_bad += 1
                continue
            x, y = arr_a[key], arr_b[key]
            if x["sha256"] == y["sha256"] and x["dtype"] == y["dtype"] and x["shape"] == y["shape"]:
                if verbose:
                    say(f"{head}: array {key}: bitwise")
                continue
            text = ""
            if x["dtype"] != y["dtype"] or x["shape"] != y["shape"]:
                text = f" dtype/shape {x['dtype']}{tuple(x['shape'])} -> {y['dtype']}{tuple(y['shape'])}"
            d = None
            if dir_a is not None and dir_b is not None:
                if va is None:
                    va = read_results(os.path.join(dir_a, name), ignore)[0]
                    vb = read_results(os.path.join(dir_b, name), ignore)[0]
                if key in va and key in vb:
                    d = diff(va[key][1], vb[key][1])
            if d is None:
                say(f"{head}: array {key}: DIFFERS{text} (values not stored; hashes only)")
                run_bad += 1
            elif not d["comparable"]:
                say(f"{head}: array {key}: DIFFERS{text} (not numeric, or shapes differ)")
                run_bad += 1
            else:
                msg = (f"max abs {d['max_abs']:.3e}, max rel {d['max_rel']:.3e}, {d['n_diff']} of {d['n']} "
                       f"elements differ{text}")
                if tol is not None and d["max_rel"] <= tol and not text:
                    say(f"{head}: array {key}: within tol {tol:g}: {msg}")
                    within += 1
                else:
                    say(f"{head}: array {key}: DIFFERS: {msg}")
                    run_bad += 1
        met_a = {k: v for k, v in a.get("metrics", {}).items() if not excluded(k.split(":", 1)[-1], ignore)}
        met_b = {k: v for k, v in b.get("metrics", {}).items() if not excluded(k.split(":", 1)[-1], ignore)}
        n_equal = 0
        for key in sorted(set(met_a) | set(met_b)):
            if key not in met_a or key not in met_b:
                say(f"{head}: metric {key}: only in {before if key in met_a else after}")
                run_bad += 1
                continue
            equal, ok, text = _same_value(met_a[key], met_b[key], tol)
            if equal:
                n_equal += 1
            elif ok:
                say(f"{head}: metric {key}: within tol {tol:g}: {text}")
                within += 1
            else:
                say(f"{head}: metric {key}: DIFFERS: {text}")
                run_bad += 1
        if verbose or run_bad:
            say(f"{head}: {len(arr_a)} arrays, {n_equal} of {len(set(met_a) | set(met_b))} metrics equal"
                + (f", {run_bad} differences" if run_bad else ""))
        bad += run_bad
    n = len(set(ra) & set(rb))
    print("\n".join(lines))
    if bad:
        print(f"RESULT: {bad} difference(s) over {n} common runs" + (f" ({within} more within tol {tol:g})"
                                                                       if within else ""))
        return 1
    if within:
        print(f"RESULT: {n} runs equal within the stated relative bound {tol:g} ({within} values not bitwise)")
        return 0
    print(f"RESULT: all {n} runs bitwise equal")
    return 0


def export(src: str, dest: str) -> int:
    """A compact copy of a recording's manifest: hashes, dtypes, shapes and metric values, no file names."""
    manifest, _ = _load_side(src)
    for run in manifest.get("runs", {}).values():
        for a in run.get("arrays", {}).values():
            a.pop("file", None)
    with open(dest, "w") as f:
        json.dump(manifest, f, separators=(",", ":"), allow_nan=True)
        f.write("\n")
    print(f"{dest}: {len(manifest.get('runs', {}))} runs, {os.path.getsize(dest) / 1024:.0f} KiB")
    return 0


# ---- command line ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.regression", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run every listed run and record its results into DIR")
    r.add_argument("dir")
    r.add_argument("--only", nargs="+", default=(), metavar="NAME", help="only these runs (names or configs)")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default 600)")
    c = sub.add_parser("compare", help="compare two recordings; exit 0 when all is bitwise equal")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("--tol", type=float, default=None, metavar="REL", help="accept a max relative difference")
    c.add_argument("--ignore", nargs="+", default=(), metavar="KEY", help="exclude more keys (components)")
    c.add_argument("--quiet", action="store_true", help="print differences only")
    e = sub.add_parser("export", help="a compact copy of a recording's manifest (hashes and metrics only)")
    e.add_argument("src")
    e.add_argument("dest")
    sub.add_parser("list", help="the runs and the skipped configs")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.cmd == "record":
        return record(args.dir, args.only, args.timeout)
    if args.cmd == "compare":
        return compare(args.before, args.after, args.tol, args.ignore, verbose=not args.quiet)
    if args.cmd == "export":
        return export(args.src, args.dest)
    for run in RUNS:
        print(f"{run['name']}: {' '.join(shown(command_line(run, '{out}')))}")
    for cfg, why in SKIPPED.items():
        print(f"skipped {cfg}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
