"""Pre-activation noise (`noise`, nodes/noise.py): a counter-based stream keyed by (seed, draw, run, step, sample,
unit), so every partition, the in-process engine and BPTT draw the same values."""
import numpy as np
import pytest
import torch

from cluster.truth.bptt import bptt_grad
from cluster.runtime.coordinator import FabricEngine
from cluster.inprocess import ReferenceEngine, relax
from experiments.config import ConfigError, load_config
from nodes.dynamics import cost
from nodes.noise import normals
from protocols import get_protocol
from tests.test_hep import MODEL, PARAMS, X, Y, gap

STD, SEED, DRAW = 0.05, 7, 3


def test_the_stream_is_a_function_of_its_key_and_standard_normal():
    full = normals(SEED, DRAW, "free", 0, 50, 8, 0, 40)
    assert np.array_equal(full[10:20, 2:5, 7:19], normals(SEED, DRAW, "free", 10, 10, 5, 7, 19)[:, 2:5])
    for other in (normals(SEED + 1, DRAW, "free", 0, 50, 8, 0, 40), normals(SEED, DRAW + 1, "free", 0, 50, 8, 0, 40),
                  normals(SEED, DRAW, "k1", 0, 50, 8, 0, 40)):
        assert np.abs(other - full).max() > 1.0
    z = normals(0, 0, "free", 0, 200, 25, 0, 40).ravel()  # n = 2e5: mean and std within 5 standard errors
    n = z.size
    assert abs(z.mean()) < 5 / n ** 0.5 and abs(z.std() - 1) < 5 * (0.5 / n) ** 0.5
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / n ** 0.5


def engine(name="hep", N=4, noise=STD, seed=SEED):
    return ReferenceEngine(MODEL, get_protocol(name).configured(N=N), torch.float64, noise=noise, seed=seed)


def run(e, draw=DRAW, T=60, beta=0.2):
    try:
        e.set_params(PARAMS)
        e.set_batch(X, Y, draw)
        phases = e.run_program(e.program(beta, T, T), record_grads=True)
        return e.estimate(), phases, e.output("free")
    finally:
        e.close()


def test_the_free_phase_is_the_noisy_relaxation_bptt_differentiates():
    _, _, free = run(engine())
    s = relax(MODEL, PARAMS, X, 60, noise=(STD, SEED, DRAW))
    assert float((free - s[-1]).abs().max()) <= 1e-13
    quiet = relax(MODEL, PARAMS, X, 60)
    assert float((s[-1] - quiet[-1]).abs().max()) > 1e-3 * STD  # the noise is there
    _, _, free0 = run(engine(), draw=None)  # no draw (inference): no noise
    assert float((free0 - quiet[-1]).abs().max()) <= 1e-13
    # BPTT is the gradient of the noisy loss: central differences on one weight
    g = bptt_grad(MODEL, PARAMS, X, Y, 60, noise=(STD, SEED, DRAW))
    h = 1e-6
    L = []
    for sign in (1, -1):
        p = {k: v.clone() for k, v in PARAMS.items()}
        p["W1"][2, 3] += sign * h
        L.append(float(cost(relax(MODEL, p, X, 60, noise=(STD, SEED, DRAW))[-1], Y)))
    fd = (L[0] - L[1]) / (2 * h)
    assert abs(fd - float(g["W1"][2, 3])) <= 1e-7 * max(1.0, abs(fd))
    gq = bptt_grad(MODEL, PARAMS, X, Y, 60)
    assert abs(float(g["W1"][2, 3]) - float(gq["W1"][2, 3])) > 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("where", [dict(granularity="layer"), dict(granularity="neuron", hosts=2)],
                         ids=["layer", "neuron-hosts2"])
def test_noisy_fabrics_draw_what_the_in_process_engine_draws(where, ray_session):
    est, phases, _ = run(engine())
    fab = FabricEngine(MODEL, get_protocol("hep").configured(N=4),
                       dict(lr=[0.0] * 3, dtype="float64", transport="zmq", timeout_s=20.0, noise=STD, seed=SEED,
                            **where))
    est_f, phases_f, _ = run(fab)
    assert gap(est_f, est) <= 1e-12
    for a, b in zip(phases_f["k0"]["states"], phases["k0"]["states"]):  # the GDU phase's recorded trajectory
        assert float((a - b).abs().max()) <= 1e-12
    quiet, _, _ = run(engine(noise=0.0))
    assert gap(est, quiet) > 1e-4


@pytest.mark.slow
def test_noise_breaks_one_sided_ep_at_small_beta_more_than_hep():
    """The nudged runs see other draws than the free run: one-sided EP's (G(s^b) - G(s0)) / b carries
    O(noise / b), holomorphic EP's N-point average only the noise's own O(noise)."""
    truth = bptt_grad(MODEL, PARAMS, X, Y, 300, noise=(STD, SEED, 0))

    def err(name, N, beta):
        e = engine(name, N)
        e.set_params(PARAMS)
        e.set_batch(X, Y, 0)
        e.run_program(e.program(beta, 300, 300))
        g = e.estimate()
        e.close()
        return float(torch.cat([(g[k] - truth[k]).flatten() for k in truth]).norm()
                     / torch.cat([truth[k].flatten() for k in truth]).norm())

    ep_small, ep_large = err("ep", 2, 0.01), err("ep", 2, 0.1)
    assert ep_small > 3 * ep_large  # O(noise / beta): grows as beta falls
    assert err("hep", 10, 0.4) < ep_small


def test_bad_noise_settings_are_refused_by_name():
    for sets, field in ((["noise=-0.1"], "noise"), (["noise=loud"], "noise")):
        with pytest.raises(ConfigError) as e:
            load_config("train", sets)
        assert e.value.field == field
