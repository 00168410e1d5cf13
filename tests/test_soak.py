"""The soak's bookkeeping on a small neuron fabric: every expected message is delivered, nothing else."""
import pytest

from experiments.soak import layer_sizes, soak, soak_config


def test_layer_sizes_give_the_issue_net():
    assert layer_sizes(112) == [8, 32, 64, 16] and sum(layer_sizes(12)[1:]) == 12


@pytest.mark.slow
def test_a_short_soak_delivers_exactly_edges_times_steps_plus_one_per_phase(ray_session):
    out = soak(soak_config(12, 2, 4), steps=100, chunk=50, progress=lambda m: None)
    assert out["nodes"] == 12 and out["hosts"] == 2 and out["edges"] == out["legal_edges"] == 2 * (3 * 7 + 7 * 2)
    assert out["delivered_messages"] == out["expected_messages"] == out["edges"] * (100 + 2)
    assert 0 < out["wire_messages"] < out["delivered_messages"] and out["violations"] == 0
    assert [s["step"] for s in out["samples"]] == [0, 50, 100]
    assert all(s["memory"][h]["vmrss"] > 0 for s in out["samples"] for h in ("H0", "H1", "driver"))
