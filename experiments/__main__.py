"""python -m experiments COMMAND [CONFIG] [--set key=value ...] [--out DIR]   (docs/reference/cli.md).

Exit status: 0 done; 1 the run failed (divergence, fault); 2 invalid config or input, named on stderr,
before any actor starts and with nothing written; 130 interrupted (Ctrl-C), after writing what was done.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from experiments.families import commands, default_configs

# the pipeline's commands and their default configs, then every experiment a family declares (experiments/families/)
DEFAULT_CONFIG = {"train": "train", "audit": "audit", "bench": "bench", "sweep": "sweep", "compare": None,
                  **default_configs()}
COMMANDS = tuple(DEFAULT_CONFIG)


def parse_args(argv):
    experiments = "\n".join(f"  {name:14s} {cmd.doc}" for name, cmd in commands().items())
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                epilog=f"the families' experiments:\n{experiments}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("config", nargs="?", help="YAML file or name in experiments/configs/ (default: per command)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (YAML value; dotted keys reach sections); repeatable")
    p.add_argument("--out", help="results folder (default results/<command>-<timestamp>/)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="sweep grid; repeatable")
    p.add_argument("--resume", metavar="DIR", help="train: continue the run in DIR from its last checkpoint")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from experiments.config import ConfigError, load_config
    from experiments.datasets import DatasetError
    out = None
    try:
        if args.command == "train" and args.resume:
            from experiments.train import resume_config
            cfg, out = resume_config(args.resume, args.sets)
        else:
            name = args.config or DEFAULT_CONFIG[args.command]
            if name is None:
                raise ConfigError("CONFIG", f"command {args.command} has no default config: name one")
            cfg = load_config(name, args.sets)
            out = args.out or f"results/{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"
        from experiments.api import Simulator
        sim = Simulator(config=cfg)
        if args.command == "train":
            sim.train(out, progress=True, resume=bool(args.resume))
        elif args.command == "audit":
            sim.audit(out, quiet=False, sets=args.sets)
        elif args.command == "bench":
            sim.bench(out)
        elif args.command == "compare":
            sim.compare(out)
        elif args.command == "sweep":
            sim.sweep(out, args.grid, sets=args.sets)
        else:
            sim.experiment(args.command, out)
        return 0
    except (ConfigError, DatasetError) as err:
        print(f"error: invalid {'config' if isinstance(err, ConfigError) else 'input'}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if args.command == "train" and out and os.path.isfile(os.path.join(out, "checkpoint.npz")):
            print(f"what was done is in {out}; continue with: python -m experiments train --resume {out}",
                  file=sys.stderr)
        return 130
    except (RuntimeError, FloatingPointError, OSError) as err:
        print(f"error: run failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
