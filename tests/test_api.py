"""The README's Python example runs as written (a custom protocol defined outside protocols/, on a hosted neuron
fabric, then a short training run), and the API's objects reach the same code as the CLI."""
import pytest
import json
import os
import re
import subprocess
import sys

import yaml

from tests.conftest import ROOT


def readme_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_commands_per_family_name_valid_configs():
    """Every command of the README's family table parses, and its config loads with its --set keys (nothing runs)."""
    from experiments.__main__ import DEFAULT_CONFIG, parse_args
    from experiments.config import load_config
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## One command per family"):text.index("## Python API")]
    commands = re.findall(r"^\| [^|]+ \| `python -m experiments ([^`]+)` \|", section, re.M)
    assert len(commands) >= 12, commands
    for line in commands:
        args = parse_args(line.split())
        load_config(args.config or DEFAULT_CONFIG[args.command], args.sets)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cosine = float(re.search(r"cosine with BPTT ([0-9.]+)", r.stdout).group(1))
    assert cosine > 0.99 and "locality violations 0" in r.stdout
    audit = json.loads((tmp_path / "results/api-audit/audit.json").read_text())
    assert audit["locality"]["violations"] == [] and len(set(audit["locality"]["placement"].values())) == 2
    cfg = yaml.safe_load((tmp_path / "results/api-audit/config.yaml").read_text())
    assert (cfg["protocol"], cfg["granularity"], cfg["fabric"]["hosts"]) == ("four-point-demo", "neuron", 2)
    metrics = json.loads((tmp_path / "results/api-train/metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5 and len(metrics["epochs"]) == 2


def test_the_simulator_names_a_bad_key_like_the_cli():
    import pytest

    from experiments.api import Simulator
    from experiments.config import ConfigError
    with pytest.raises(ConfigError, match="fabric.hosts: must be >= 0"):
        Simulator(hosts=-1)
    with pytest.raises(ConfigError, match="colour: unknown key"):
        Simulator(colour="red")
