"""The figures, drawn from small synthetic data (no fabric): each file is a non-trivial PNG; the pure helpers the
figures lay out with (grid, subsample, layered positions, edge curvatures, fitted line, ticks) give what they say."""
import math
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from experiments.plots import (describe, edge_arcs, fmt_cosine, grid_shape, layered_positions, plot_curves,
                               plot_estimate_vs_bptt, plot_gdu, plot_locality, subsample)
from experiments.sweep import fit_slopes, fitted_line, plot_sweep, thin_ticks
from tests.conftest import assert_png


def spec(i, group, lo, ports=()):
    return NS(id=i, block=NS(group=group, lo=lo, hi=lo + 1), in_ports=tuple(NS(src=a, dst=i, kind=k) for a, k in ports))


def test_grid_shape_is_about_square_with_at_most_max_columns():
    assert [grid_shape(n) for n in (1, 2, 4, 5, 9, 16, 17)] == [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (4, 4),
                                                                 (5, 4)]
    assert grid_shape(6, 3) == (2, 3)


def test_subsample_is_fixed_keeps_the_farthest_and_all_of_few():
    ref = np.linspace(-1, 1, 10_000)
    est = ref.copy()
    est[1234] += 5.0
    idx = subsample(est, ref, 500)
    assert len(idx) == 500 == len(set(idx)) and 1234 in idx and np.array_equal(idx, np.sort(idx))
    assert np.array_equal(idx, subsample(est, ref, 500))
    assert np.array_equal(subsample(est[:30], ref[:30], 500), np.arange(30))


def test_fmt_cosine_reads_near_one():
    assert fmt_cosine(1 - 3.2e-9) == "1 - 3.2e-09" and fmt_cosine(0.93) == "0.9300" and fmt_cosine(1.0) == "1.0000"
    assert fmt_cosine(float("nan")) == "nan"


def test_describe_names_model_protocol_and_engine():
    meta = {"model": "energy", "sizes": [5, 3], "protocol": "ep", "engine": "fabric", "granularity": "neuron",
            "hosts": 2}
    assert describe(meta) == "energy [5, 3] | protocol ep | fabric/neuron, 2 hosts"
    cfg = NS(model="energy", sizes=(5, 3), protocol="ep", engine="reference", granularity="layer", fabric=NS(hosts=2))
    assert describe(cfg) == "energy [5, 3] | protocol ep | reference/layer"


def test_layered_positions_columns_by_group_and_ellipse_for_a_recurrent_group():
    specs = {i: spec(i, g, lo) for i, g, lo in
             [("H.1", "H", 1), ("H.0", "H", 0), ("O.0", "O", 0), ("H.2", "H", 2)]}
    pos, groups = layered_positions(specs)
    assert groups == ["H", "O"]
    assert pos["H.0"] == (0.0, 0.5 / 3) and pos["H.1"] == (0.0, 1.5 / 3) and pos["H.2"] == (0.0, 2.5 / 3)
    assert pos["O.0"] == (1.0, 0.5)
    ring = {f"S.{k}": spec(f"S.{k}", "S", k) for k in range(6)}
    pos, _ = layered_positions(ring, [("S.0", "S.3")])
    xs = [pos[f"S.{k}"][0] for k in range(6)]
    assert min(xs) < -0.2 and max(xs) > 0.2 and all(-0.31 < x < 0.31 for x in xs)
    assert all(0 < pos[i][1] < 1 for i in ring) and pos["S.0"][1] < pos["S.1"][1]  # from the bottom
    assert len({pos[i] for i in ring}) == 6


def test_edge_arcs_both_directions_share_a_curvature_parallel_kinds_do_not():
    rad = edge_arcs({("a", "b", "a"), ("b", "a", "a"), ("a", "b", "t")})
    assert rad[("a", "b", "a")] == rad[("b", "a", "a")] == 0.15  # the same bend: they bow to opposite sides
    assert rad[("a", "b", "t")] == 0.3


def test_fitted_line_and_thin_ticks():
    pts = [{"beta": b, "rel_l2": 3 * b ** 2, "diverged": False} for b in (1e-1, 1e-2, 1e-3, 1e-4)]
    pts.append({"beta": 1.0, "rel_l2": None, "diverged": True})
    slope = fit_slopes(pts, "beta", [])[0]["slope"]
    assert math.isclose(slope, 2.0, rel_tol=1e-9)
    xs, ys = fitted_line(pts, "beta", slope)
    assert np.allclose(xs, [1e-4, 1e-1]) and np.allclose(ys, [3e-8, 3e-2])
    assert thin_ticks([3, 1, 2, 1]) == [1, 2, 3]
    many = thin_ticks(range(20), 7)
    assert len(many) == 7 and many[0] == 0 and many[-1] == 19


@pytest.mark.slow  # matplotlib draws
def test_estimate_vs_bptt_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    bptt = {"W0": torch.randn(100, 60, generator=g, dtype=torch.float64), "b0": torch.randn(4, generator=g,
                                                                                             dtype=torch.float64)}
    est = {k: v * 1.01 for k, v in bptt.items()}
    path = tmp_path / "estimate_vs_bptt.png"
    plot_estimate_vs_bptt(str(path), est, bptt, title="energy [5, 3] | protocol ep | reference/layer")
    assert_png(path, 500, 350)


@pytest.mark.slow  # matplotlib draws
def test_gdu_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    s = {"W0": torch.randn(20, 3, 4, generator=g), "b0": torch.randn(20, 3, generator=g),
         "s1": torch.randn(20, 2, 3, generator=g)}
    path = tmp_path / "gdu.png"
    plot_gdu(str(path), {k: v * 0.9 for k, v in s.items()}, s, {"s1": 0.5}, title="toy")
    assert_png(path, 600, 400)


@pytest.mark.slow  # matplotlib draws
def test_locality_png_with_kinds_a_silent_edge_and_a_violation(tmp_path):
    specs = {"S.0": spec("S.0", "S", 0, [("S.1", "a"), ("Y.0", "a")]), "S.1": spec("S.1", "S", 1, [("S.0", "a")]),
             "Y.0": spec("Y.0", "Y", 0, [("S.0", "a"), ("S.0", "r"), ("S.1", "a")])}
    report = {"nodes": 3, "edges": 4, "legal_edges": 5, "messages": 60,
              "per_edge": {"S.0->S.1": {"a": 10}, "S.1->S.0": {"a": 10}, "S.0->Y.0": {"a": 10, "r": 10},
                           "Y.0->S.0": {"a": 10}, "Y.0->S.1": {"t": 10}},
              "coordinator": {"global": 3}, "globals": {"beta": 3}, "boundary": {"x": ["S.0", "S.1"]},
              "placement": {"S.0": "H0", "S.1": "H1", "Y.0": "H0"},
              "violations": [{"src": "Y.0", "dst": "S.1", "kind": "t", "why": "no port Y.0->S.1 of kind 't'"}]}
    path = tmp_path / "locality.png"
    plot_locality(str(path), specs, report, title="toy")
    assert_png(path, 700, 300)


@pytest.mark.slow  # matplotlib draws
def test_curves_png_with_and_without_the_baseline(tmp_path):
    rows = [{"epoch": e, "train_accuracy": 0.5 + 0.1 * e, "test_accuracy": 0.45 + 0.1 * e, "train_loss": 1 / e,
             "test_loss": 1.1 / e} for e in (1, 2, 3)]
    for name, base in (("ep", []), ("both", [dict(r) for r in rows])):
        path = tmp_path / f"{name}.png"
        plot_curves(str(path), {"epochs": rows, "baseline": base}, "energy [5, 3] | protocol ep | reference/layer")
        assert_png(path, 600, 300)


@pytest.mark.slow  # matplotlib draws
def test_sweep_png(tmp_path):
    pts = [{"beta": b, "protocol": p, "rel_l2": b ** n, "diverged": False}
           for p, n in (("ep", 1), ("ep-symmetric", 2)) for b in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5)]
    path = tmp_path / "sweep.png"
    plot_sweep(str(path), pts, "beta", ["protocol"], title="toy")
    assert_png(path, 400, 300)
