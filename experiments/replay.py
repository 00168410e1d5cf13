"""Replaying an audit bundle (`replay=BUNDLE.npz`; the bundle: cluster/audit.write_bundle): where the file is, which
model it holds, and the settings a replay runs with (the bundle's meta, then the command line's --set on the keys
the model's family lets a replay change)."""
from __future__ import annotations

import json
import os

import numpy as np

from cluster.audit import read_bundle
from experiments.config import ConfigError

BUNDLE_FIXED = ("dtype", "batch", "dataset", "data_dir", "data_path", "init_scale", "test_fraction")  # a replay's own


def bundle_path(replay: str) -> str:
    """A relative path that is not a file here is looked up in experiments/configs/ (where shipped bundles live)."""
    from experiments.config import CONFIG_DIR
    shipped = os.path.join(CONFIG_DIR, replay)
    if not os.path.isfile(replay) and not os.path.isabs(replay) and os.path.isfile(shipped):
        return shipped
    return replay


def bundle_model(replay: str):
    """The model a bundle's meta names (its arrays unread), or None when there is no readable bundle."""
    path = bundle_path(replay)
    if not os.path.isfile(path):
        return None
    try:  # the meta alone (an npz reads its members lazily)
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"])).get("model")
    except Exception:
        return None


def replayed(cfg, sets, meta_keys, replay_keys):
    """(config, bundle): settings from a bundle's meta (its `meta_keys`), then the command line's --set on top
    (those of `replay_keys`: granularity, transport, ...)."""
    cfg = cfg.replace(replay=bundle_path(cfg.replay))
    if not os.path.isfile(cfg.replay):
        raise ConfigError("replay", f"no bundle file {cfg.replay!r}")
    try:
        bundle = read_bundle(cfg.replay)
    except Exception as err:  # a corrupt or foreign file
        raise ConfigError("replay", f"cannot read bundle {cfg.replay!r}: {err}") from None
    meta = bundle["meta"]
    data = cfg.to_dict()
    data.update({k: meta[k] for k in meta_keys if k in meta})
    data["dtype"] = "float64"
    from experiments.config import Config, _build, _set_dotted, parse_value, validate
    fixed = (set(meta_keys) | set(BUNDLE_FIXED)) - set(replay_keys)
    for item in sets:
        k, v = item.split("=", 1)
        if k.strip() in fixed:
            raise ConfigError("--set", f"{k.strip()}: a replayed bundle fixes it (its meta, batch and parameters); "
                                       f"--set may change only {', '.join(replay_keys)} and where it runs")
        if k.strip() in replay_keys:
            _set_dotted(data, k.strip(), parse_value(v))
    return validate(_build(Config, data)), bundle
