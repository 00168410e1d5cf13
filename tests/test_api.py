"""The README's Python example and the API reference's (a custom protocol defined outside protocols/, on a hosted
neuron fabric, then a short training run) run as written, and the API's objects reach the same code as the CLI."""
import pytest
import json
import os
import re

import yaml

from tests.conftest import ROOT


def first_python_block(path: str, after: str = "") -> str:
    text = open(os.path.join(ROOT, path)).read()
    return re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)


def run_example(code: str, where, monkeypatch, capsys) -> str:
    """Run an example as a user's script would (its module is __main__, so what it defines travels by value) in
    `where`, in this process and on the session's Ray instance; returns what it printed."""
    from tests.conftest import _start_ray
    _start_ray()  # the example's own start of Ray finds it running
    monkeypatch.chdir(where)
    capsys.readouterr()
    exec(compile(code, str(where / "example.py"), "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


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
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    out = run_example(first_python_block("README.md", "## Python API"), tmp_path, monkeypatch, capsys)
    cosine = float(re.search(r"cosine with BPTT ([0-9.]+)", out).group(1))
    assert cosine > 0.99 and "| violations 0" in out
    assert os.listdir(tmp_path) == ["results"] and os.listdir(tmp_path / "results") == ["api-train"]  # out=None
    metrics = json.loads((tmp_path / "results/api-train/metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5 and len(metrics["epochs"]) == 2


@pytest.mark.slow
def test_the_api_references_own_protocol_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """A protocol defined in the user's script (outside protocols/), on a hosted neuron fabric, then a training."""
    out = run_example(first_python_block("docs/reference/python-api.md"), tmp_path, monkeypatch, capsys)
    cosine = float(re.search(r"cosine with BPTT ([0-9.]+)", out).group(1))
    assert cosine > 0.99 and "locality violations 0" in out
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
