"""`train`: training through the fabric (or the in-process engine), one loop for every model family.

The family of the run's model (experiments/families/) gives the data, how a batch trains on the engine, how the
training and test sets are evaluated, the metrics rows, the plots and printed lines (experiments/hooks.Training);
this loop gives every family the same run: every `checkpoint_every` batches and at every epoch's end a checkpoint,
from which a run recovers when a host actor dies (experiments/recovery.py: rollback and replay, at most
`max_faults` times) and from which `--resume` continues it. Writes config.yaml, metrics.json (the family's keys,
`faults`, `replayed_batches`, `fault_log`, on a fabric `locality`; also when the run failed, with its `error`),
the family's metrics.csv and plots, checkpoint.npz, lineage.json (each node's (batch serial, update hash) list) and
on a fabric locality.json.
"""
from __future__ import annotations

import copy
import os
import sys

from cluster.runtime.fabric import HostLost
from cluster.locality import locality_report
from cluster.launch import make_engine, model_from, protocol_from
from experiments import checkpoint
from experiments.checkpoint import Snapshot
from experiments.config import ConfigError, load_config
from experiments.families import family_of
from experiments.recovery import Rollback
from experiments.results import prepare, write_json


def resume_config(out_dir: str, sets=()):
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(out_dir, checkpoint.FILE)):
        raise ConfigError("--resume", f"{out_dir} holds no config.yaml and checkpoint.npz to resume from")
    return load_config(path, sets), out_dir


def run_train(cfg, out_dir: str, progress: bool = True, resume: bool = False, model=None, protocol=None,
              on_batch=None) -> dict:
    """Train cfg's model (or `model`) with cfg's protocol (or `protocol`, an object) on cfg's engine; writes out_dir.
    A dead host actor is recovered from by rollback and replay (experiments/recovery.py). `on_batch(engine,
    epoch, batch)` is called before each training batch (fault injection in tests). Returns what metrics.json
    holds, with the final parameters (float64 tensors) under `final_params` and the nodes' lineages."""
    model = model or model_from(cfg)
    protocol = protocol_from(cfg, protocol)
    fam = family_of(model).hook("training")(cfg, model, protocol)  # loads and checks the data
    if not resume and os.path.isfile(os.path.join(out_dir, checkpoint.FILE)):
        raise ConfigError("--out", f"{out_dir} already holds a run (checkpoint.npz); continue it with "
                                   f"--resume {out_dir} or choose another folder")
    last, record = checkpoint.load(out_dir) if resume else (Snapshot(tally=fam.tally()), None)
    if not resume:
        prepare(out_dir, cfg)
    params = fam.params()
    baseline = fam.baseline(params)
    rb = Rollback(lambda: make_engine(cfg, model, protocol), params, out_dir, cfg.checkpoint_every, cfg.max_faults,
                  baseline, last, record)
    n_batches = len(range(0, fam.n_train, cfg.batch))
    epoch, b, tally, metrics = rb.last.epoch, rb.last.batch, dict(rb.last.tally), copy.deepcopy(rb.last.metrics)
    engine, final, lineage, locality = None, None, None, None
    try:
        engine = rb.engine()
        while final is None:
            try:
                if (epoch, b) == (0, 0) and not metrics["epochs"]:
                    fam.begin(engine, baseline, metrics, tally)
                if epoch < cfg.epochs:
                    order, knobs = fam.plan(epoch)
                    bar = _bar(n_batches, b, epoch, cfg, progress and fam.bar)
                    for b in range(b, n_batches):
                        if on_batch is not None:
                            on_batch(engine, epoch, b)
                        fam.train_batch(engine, baseline, order[b * cfg.batch:(b + 1) * cfg.batch], knobs[b],
                                        epoch * n_batches + b, tally)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(fam.postfix(tally))
                        if rb.due(b + 1, n_batches):
                            rb.checkpoint(engine, epoch, b + 1, tally, metrics)
                    b = n_batches
                    if bar is not None:
                        bar.close()
                    fam.end_epoch(engine, baseline, epoch, tally, metrics, progress)
                    epoch, b, tally = epoch + 1, 0, fam.tally()
                    rb.checkpoint(engine, epoch, 0, tally, metrics)
                else:
                    final = checkpoint.params_of(engine)
                    fam.finish(engine, out_dir, metrics)
                    lineage = {i: [list(r) for r in v] for i, v in sorted(engine.lineage().items())}
                    locality = _locality(engine, out_dir)
            except HostLost as err:
                engine = rb.recover(engine, err, epoch, b, n_batches)
                final = None
                epoch, b, tally = rb.last.epoch, rb.last.batch, dict(rb.last.tally)
                metrics = copy.deepcopy(rb.last.metrics)  # the checkpoint's own copy stays as it was taken
    except BaseException as err:
        _write_metrics(out_dir, fam, metrics, None, baseline, rb.summary(), error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if engine is not None:
            engine.close()
    summary = _write_metrics(out_dir, fam, metrics, final, baseline, rb.summary(), lineage=lineage,
                             locality=locality)
    summary.update(final_params=final, lineage=lineage)
    if progress:
        fam.report(summary, out_dir)
    return summary


def _locality(engine, out_dir: str):
    """A fabric run's locality report (cluster/locality.py) from every message its receivers logged since the fabric
    was built (a recovered run: since its last rebuild) -> locality.json; returns its totals. None in-process."""
    if not hasattr(engine, "message_logs"):
        return None
    rep = locality_report(engine.specs, engine.message_logs(), engine.protocol)
    rep["covers"] = "the messages delivered since the fabric was last built"
    write_json(os.path.join(out_dir, "locality.json"), rep)
    return {k: len(rep[k]) if k == "violations" else rep[k] for k in ("edges", "legal_edges", "messages", "violations")}


def _write_metrics(out_dir: str, fam, metrics: dict, final, baseline, recovery: dict, lineage=None, error=None,
                   locality=None) -> dict:
    """metrics.json (also when the run failed: what was done, the faults, the error), the family's metrics.csv and
    plots; lineage.json: each node's (batch serial, update hash) list."""
    summary = {**fam.summary(metrics, final, baseline), **recovery}
    if error is not None:
        summary["error"] = error
    if locality is not None:
        summary["locality"] = locality
    write_json(os.path.join(out_dir, "metrics.json"), summary)
    if lineage is not None:
        write_json(os.path.join(out_dir, "lineage.json"), lineage)
    fam.write(out_dir, metrics)
    return summary


def _bar(n_batches: int, done: int, epoch: int, cfg, progress: bool):
    """An epoch's progress on stderr: a bar on a terminal, plain lines (a quarter of the epoch each) otherwise."""
    if not progress:
        return None
    desc = f"epoch {epoch + 1}/{cfg.epochs}"
    if not sys.stderr.isatty():
        return LineProgress(n_batches, done, desc)
    from tqdm import tqdm
    return tqdm(total=n_batches, initial=done, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)


class LineProgress:
    """A progress bar's interface as plain lines for logs: one line at each quarter of the epoch, no carriage
    returns."""

    def __init__(self, total: int, done: int, desc: str):
        self.total, self.n, self.desc, self.postfix = total, done, desc, {}
        self.marks = sorted({max(1, round(total * q / 4)) for q in (1, 2, 3)} - set(range(done + 1)))

    def update(self, k: int) -> None:
        self.n += k
        if self.marks and self.n >= self.marks[0]:
            self.marks = [m for m in self.marks if m > self.n]
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} batches{extra}", file=sys.stderr, flush=True)

    def set_postfix(self, postfix: dict) -> None:
        self.postfix = dict(postfix)

    def close(self) -> None:
        pass
