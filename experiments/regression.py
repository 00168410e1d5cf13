"""Bitwise regression harness: record the results of every shipped config, and compare two recordings.

    python -m experiments.regression record DIR [--only NAME ...] [--timeout S]
    python -m experiments.regression compare BEFORE AFTER [--tol REL] [--ignore KEY ...]
    python -m experiments.regression export DIR FILE
    python -m experiments.regression list

`record` runs, one subprocess each and through the public command line only (`python -m experiments audit|train
CONFIG --set key=value ... --out OUT`), a quick audit of every shipped config in experiments/configs/ that `audit`
accepts and one short training epoch of a few (experiments/regression_runs.RUNS: small batches, few steps T1 / T2 or a short sequence T,
one epoch, float64 where the config allows it, fixed seeds). The configs it does not run are listed in its SKIPPED
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
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from experiments.regression_results import _read_manifest, _write_manifest, compare, describe, export, read_results
from experiments.regression_runs import CONFIG_DIR, EXCLUDED, FORMAT, MANIFEST, ROOT, RUN_ENV, RUNS, SKIPPED

__all__ = ["CONFIG_DIR", "EXCLUDED", "FORMAT", "MANIFEST", "RUNS", "SKIPPED", "command_line", "compare", "describe",
           "engine_of", "export", "main", "read_results", "record", "shown"]


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
