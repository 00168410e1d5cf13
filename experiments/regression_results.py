"""What a recorded run's files hold (arrays with their hashes, flattened metrics) and the comparison of two
recordings, for the regression harness (experiments/regression.py)."""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from experiments.regression_runs import EXCLUDED, MANIFEST


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
