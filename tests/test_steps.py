"""The step-wise audit beyond the parameters: the neurons' GDU series, the eta law of continual EP's departure
from it, and the free-phase memory (a node that forgets s0 once the nudged phase has moved off it)."""
import numpy as np
import pytest

from cluster.nodeset import PhaseError
from experiments.api import Simulator
from nodes.layered import layered, layered_asym
from protocols.ep import EP
from tests.conftest import batch, scaled_params

TOY = dict(config="gdu-energy-toy", engine="reference")


@pytest.mark.slow
def test_prototypical_neurons_follow_bptt_through_rho_prime(tmp_path):
    """(s_{t+1} - s_t)/beta -> -rho'(h*) dl/ds_{T1-t}: without the rho' factor the series part by about
    1 - mean rho' (0.76 here), with it by O(beta)."""
    sim = Simulator(layered("prototypical", [5, 8, 6, 3], "sigmoid"), T1=100, **TOY)
    rmse = {b: {k: v["rmse"] for k, v in sim.audit(out=str(tmp_path / f"b{b}"), beta=b)["steps"].items()}
            for b in (1e-3, 1e-2)}
    for k in ("s1", "s2", "s3", "W0", "W2"):
        assert rmse[1e-3][k] <= 5e-3, (k, rmse[1e-3][k])
        assert 5 <= rmse[1e-2][k] / rmse[1e-3][k] <= 20, k


@pytest.mark.slow
def test_the_bundle_holds_the_neuron_series_as_pinned(tmp_path):
    """estimate_steps/s{n} = (s^beta_{t+1} - s^beta_t)/beta and bptt_steps/s{n} = -dl/ds_{T1-t} per sample: at
    t = 0 the output's is y - s0_N and the hidden ones are zero (L reads only the output at T1)."""
    Simulator(T1=300, **TOY).audit(out=str(tmp_path / "a"))
    z = np.load(tmp_path / "a" / "audit.npz")
    T2, B = 20, 4
    for n, d in ((1, 8), (2, 6), (3, 3)):
        assert z[f"estimate_steps/s{n}"].shape == z[f"bptt_steps/s{n}"].shape == (T2, B, d)
    assert np.abs(z["bptt_steps/s1"][0]).max() == 0 and np.abs(z["bptt_steps/s2"][0]).max() == 0
    dt = 0.5  # beta = 1e-3
    # the first nudged step moves the output by -dt beta (s_N - y) exactly (energy, no rho' at the nudge)
    np.testing.assert_allclose(z["estimate_steps/s3"][0], dt * z["bptt_steps/s3"][0], rtol=0, atol=1e-9)
    assert np.abs(z["bptt_steps/s3"][0]).max() > 0.05


def _series(sim, tmp_path, tag, **kw):
    sim.audit(out=str(tmp_path / tag), **kw)
    z = np.load(tmp_path / tag / "audit.npz")
    return {k: z[k] for k in z.files if k.startswith("estimate_steps/") and "/s" not in k}


def _departure(a, b):
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in b) / sum((b[k] ** 2).sum() for k in b)))


@pytest.mark.slow
def test_continual_ep_departs_from_ep_as_eta_over_beta(tmp_path):
    """C-EP's per-step series part from its eta = 0 series (EP's) in proportion to eta / beta: the weights move by
    about eta g per step, each step's difference is divided by beta. Slope 1 in eta, ten times at beta / 10."""
    sim = Simulator(protocol="cep", T1=300, T2=10, **TOY)
    d = {}
    for beta, etas in ((1e-3, (1e-7, 1e-6, 1e-5)), (1e-2, (1e-5,))):  # the slope at one beta, the ratio at eta 1e-5
        ref = _series(sim, tmp_path, f"0-{beta}", beta=beta, lr=0.0)
        for eta in etas:
            d[beta, eta] = _departure(_series(sim, tmp_path, f"{eta}-{beta}", beta=beta, lr=eta), ref)
    slope = np.polyfit(np.log10([1e-7, 1e-6, 1e-5]), np.log10([d[1e-3, e] for e in (1e-7, 1e-6, 1e-5)]), 1)[0]
    assert 0.95 <= slope <= 1.05, slope
    assert 8 <= d[1e-3, 1e-5] / d[1e-2, 1e-5] <= 12, d


NETS = {"prototypical": layered("prototypical", [5, 8, 6, 3], "sigmoid"),
        "prototypical-asym": layered_asym([5, 8, 6, 3], "sigmoid")}


def _audit(tmp_path, tag, forget, protocol, model, **kw):
    return Simulator(NETS[model], protocol=protocol, dataset="random", T1=30, T2=8, beta=1e-2, optimizer="sgd",
                     forget_free=forget, **kw).audit(out=str(tmp_path / tag))


@pytest.mark.slow
@pytest.mark.parametrize("protocol,model,engine", [("cep", "prototypical", "reference"), ("cep", "prototypical", "fabric"),
                                                   ("cvf", "prototypical-asym", "reference")])
def test_continual_rules_need_no_free_phase_memory(protocol, model, engine, tmp_path, ray_session):
    kw = dict(lr=0.05, engine=engine, steps=True)
    _audit(tmp_path, "keep", False, protocol, model, **kw)
    _audit(tmp_path, "forget", True, protocol, model, **kw)
    a, b = np.load(tmp_path / "keep" / "audit.npz"), np.load(tmp_path / "forget" / "audit.npz")
    for k in a.files:
        if k != "meta":
            assert np.array_equal(a[k], b[k]), k  # estimates, step series: bitwise


@pytest.mark.slow
@pytest.mark.parametrize("protocol,model,needs,engine", [
    ("ep", "prototypical", "accumulator 'acc'", "reference"), ("ep", "prototypical", "accumulator 'acc'", "fabric"),
    ("vf", "prototypical-asym", "accumulator 'free'", "reference"),
    ("ep-symmetric", "prototypical", "saved state 'free'", "reference")])
def test_rules_with_free_phase_memory_stop_by_name(protocol, model, needs, engine, tmp_path, ray_session):
    with pytest.raises(RuntimeError) as err:
        _audit(tmp_path, "f", True, protocol, model, lr=0.0, engine=engine)
    msg = str(err.value)
    assert "forget_free" in msg and needs in msg and "node L" in msg, msg


def test_a_non_finite_estimate_is_an_error_naming_node_and_tensor():
    class Broken(EP):
        name = "ep-broken"

        def estimate(self, mem, held):
            return {k: v * float("inf") for k, v in super().estimate(mem, held).items()}

    from cluster.inprocess import ReferenceEngine
    net = layered("prototypical", (4, 5, 3), "sigmoid")
    e = ReferenceEngine(net, Broken())
    e.set_params(scaled_params(net))
    e.set_batch(*batch(net))
    e.run_program(e.program(0.1, 10, 4))
    with pytest.raises(PhaseError, match=r"node L1: the estimate of W0, b0, W1 is not finite"):
        e.estimate()


def test_training_refuses_the_forgetting_test(tmp_path):
    from experiments.config import ConfigError
    with pytest.raises(ConfigError) as err:
        Simulator(protocol="cep", optimizer="sgd", forget_free=True, epochs=1).train(out=str(tmp_path / "t"))
    assert err.value.field == "forget_free"


@pytest.mark.slow
def test_the_eta_sweep_records_the_step_metrics(tmp_path):
    """`sweep gdu-energy-toy --set protocol=cep --set steps=true --grid lr=...`: every point carries the per-tensor
    step-wise metrics, the largest eta's RMSE exceeds eta = 0's for every tensor, and steps.png is drawn."""
    from experiments.config import load_config
    from experiments.sweep import run_sweep
    cfg = load_config("gdu-energy-toy", ["protocol=cep", "steps=true", "engine=reference", "T1=150", "T2=10"])
    res = run_sweep(cfg, str(tmp_path / "s"), ["lr=0,1e-3"])
    p0, p1 = res["points"]
    assert set(p0["steps"]) == {"W0", "b0", "W1", "b1", "W2", "b2", "s1", "s2", "s3"}
    assert all(p1["steps"][k]["rmse"] > p0["steps"][k]["rmse"] for k in p0["steps"])
    assert (tmp_path / "s" / "steps.png").stat().st_size > 0
