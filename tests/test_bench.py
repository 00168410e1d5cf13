"""`python -m experiments bench --set quick=true` runs end to end and reports every ratio the benchmark defines."""
import pytest
import json
import math
import torch

from tests.conftest import run_cli
RATIOS = ("layer_fabric_over_bare_pattern", "neuron_over_bare_pattern", "layer_fabric_over_inprocess",
          "neuron_msg_rate_over_raw_zmq", "zmq_over_ray_transport",
          "explicit_over_autograd", "inprocess_over_matmuls", "max_neuron_actors",
          "hosted_neuron_epoch_over_layer_epoch", "hosted_neuron_rss_gb", "nodes_slope")


@pytest.mark.slow
def test_bench_quick(tmp_path, ray_session):
    out = tmp_path / "bench"
    proc = run_cli("bench", "--set", "quick=true", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "bench.json") as f:
        bench = json.load(f)
    keys = RATIOS + (("cuda_step_us",) if torch.cuda.is_available() else ())
    ratios = bench["ratios"]
    for k in keys:
        assert k in ratios, f"missing ratio {k}"
    for k, v in ratios.items():  # ratios of times and counts are positive; a quick run's fitted slope may be
        # swamped by timing noise on a loaded machine (its value is the benchmark's business, not a test's)
        assert isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or k.endswith("_slope")), f"{k} = {v!r}"
        assert k in bench["targets"] and isinstance(bench["met"][k], bool) == (bench["targets"][k] is not None)
    diagnostics = bench["diagnostics"]
    for k in ("layer_fabric_over_raw_same_pattern", "raw_layer_same_pattern_over_inprocess",
              "neuron_msg_rate_over_raw_same_pattern", "raw_same_pattern_over_raw_stream"):
        assert math.isfinite(diagnostics[k]) and diagnostics[k] > 0, f"{k} = {diagnostics.get(k)!r}"
    for row in bench["neuron"]:  # every message crosses ZeroMQ when each node has its own actor
        assert 0 < row["wire_messages"] <= row["state_messages"]
        assert (row["wire_messages"] == row["state_messages"]) == (row["actors"] == row["nodes"]), row
    hosted = bench["hosted_neuron"]  # logical nodes on 2 host actors, against the layer fabric of the same net
    assert [(r["hosts"], r["actors"], r["nodes"]) for r in hosted["neuron"]] == [(2, 2, sum(hosted["sizes"][1:]))]
    assert hosted["layer"]["nodes"] == len(hosted["sizes"]) - 1 and hosted["layer"]["batch_s"] > 0
    assert [r["nodes"] for r in bench["nodes_scaling"]["rows"]] == [16, 24, 40]
    assert (out / "bench.png").stat().st_size > 0
    assert (out / "config.yaml").exists()


def test_the_bare_pattern_of_a_hosted_fabric_runs_one_process_per_host():
    from experiments import bench_raw
    r = bench_raw.zmq_exchange_hosts({"H0": ["H1", "H2"], "H1": ["H0"], "H2": ["H0"]}, 400, 5, 12)
    assert r["processes"] == 3 and r["frames_per_step"] == 4 and r["step_us"] > 0
    assert math.isclose(r["msgs_per_s"], 12 * 1e6 / r["step_us"], rel_tol=1e-9)
