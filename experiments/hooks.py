"""What the one training loop (experiments/train.py) asks of a model family: the `Training` hooks.

The loop owns the run: the engine, a checkpoint every `checkpoint_every` batches and at every epoch's end, rollback
and replay after a dead host actor (experiments/recovery.py), `--resume`, lineage.json, locality.json, metrics.json
also on failure. A family (experiments/families/ picks it from the model's declaration) says what a run of its
models is made of, through one `Training` object per run, made with the run's config, model and protocol object:

  data            loaded and checked when the object is made (a ConfigError or DatasetError before anything is
                  written); `n_train` training samples
  params()        the run's initial parameters; baseline(params): a paired run from them (with train_batch's
                  share of the work, get_state() and set_state() for checkpoints), or None
  plan(epoch)     (order, knobs): epoch e's sample order and each batch's nudging strength, a pure function of
                  (seed, e), so a run's position (epoch, batch) is all a resumed or replayed run needs
  tally()         a fresh epoch's running sums (a checkpoint keeps them: JSON values)
  begin(...)      at the very start (no metrics row yet): rows the family records before any update
  train_batch(...) one batch on the engine (its update applied by the nodes) and on the baseline, into the tally
  end_epoch(...)  the epoch's row(s) appended to metrics, from the engine's own evaluation; printed
  finish(...)     after the last epoch, with the engine still up
  summary(...)    metrics.json's family keys; write(...): metrics.csv and the plots; report(...): the last line

The metrics dict is {"epochs": [...], "baseline": [...]} (experiments/checkpoint.Snapshot): rows the family appends,
deep-copied into every checkpoint.
"""
from __future__ import annotations


class Training:
    bar = True  # whether the loop shows a progress bar per epoch (postfix(tally) beside it)

    def __init__(self, cfg, model, protocol):
        self.cfg, self.model, self.protocol = cfg, model, protocol
        self.n_train = 0

    def params(self) -> dict:
        raise NotImplementedError

    def baseline(self, params: dict):
        return None

    def plan(self, epoch: int) -> tuple:
        raise NotImplementedError

    def tally(self) -> dict:
        return {"seconds": 0.0}

    def begin(self, engine, baseline, metrics: dict, tally: dict) -> None:
        pass

    def train_batch(self, engine, baseline, idx, knob, draw: int, tally: dict) -> None:
        raise NotImplementedError

    def postfix(self, tally: dict) -> dict:
        return {}

    def end_epoch(self, engine, baseline, epoch: int, tally: dict, metrics: dict, progress: bool) -> None:
        raise NotImplementedError

    def finish(self, engine, out_dir: str, metrics: dict) -> None:
        pass

    def summary(self, metrics: dict, final, baseline) -> dict:
        raise NotImplementedError

    def write(self, out_dir: str, metrics: dict) -> None:
        pass

    def report(self, summary: dict, out_dir: str) -> None:
        pass
