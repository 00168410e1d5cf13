"""The engine's fixed-buffer loop (cluster/captured.py) computes exactly what `relax` computes, and follows the
engine's parameters: updated in place by the optimiser, rebound by set_params. On CPU the loop runs the very
body that a GPU captures as a CUDA graph, so what these tests check is what each replay computes."""
import pytest
import torch

from cluster.captured import StaticLoop
from cluster.inprocess import ReferenceEngine, relax
from nodes.layered import layered
from protocols.base import Phase
from tests.conftest import batch, lrs, scaled_params

MODELS = [layered("energy", (4, 5, 3, 2), "sigmoid", dt=0.5), layered("prototypical", (4, 6, 3), "sigmoid4")]


def engine(model, params, **kw):
    e = ReferenceEngine(model, "ep-symmetric", torch.float64, lrs(model), **kw)
    e.set_params(params)
    return e


def saved(e, name):
    return [e.nodes.saved(i, name) for i in e.nodes.ids]


def full(e):
    return e.get_params()


def assert_same(a, b):
    for sa, sb in zip(a, b, strict=True):
        assert torch.equal(sa, sb)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_phases_equal_relax_bitwise_with_a_remainder_chunk(model):
    """23 free steps (two chunks of 10, then 2 on the loop and the last eagerly), nudged phases from the free state."""
    params = scaled_params(model)
    x, y = batch(model)
    e = engine(model, params)
    e.set_batch(x, y)
    e.run_phase(Phase("free", 23))
    assert e.loops, "the free phase ran on the fixed-buffer loop"
    free = relax(model, full(e), x, 23)
    assert_same(saved(e, "free"), free)
    for name, beta in (("plus", 0.2), ("minus", -0.2)):
        e.run_phase(Phase(name, 7, beta, "free"))
        assert_same(saved(e, name), relax(model, full(e), x, 7, free, beta, y))
    e.run_phase(Phase("again", 0, 0.0, "free"))
    assert_same(saved(e, "again"), free)
    assert saved(e, "again")[0] is not saved(e, "free")[0]  # a copy: the next phase may not change a saved state


def test_the_loop_follows_parameters_updated_in_place_and_rebound():
    model = MODELS[0]
    params = scaled_params(model)
    x, y = batch(model)
    e = engine(model, params)
    e.train_batch(x, y, 0.2, 12, 4)  # phases, then the optimiser's in-place update
    assert not torch.equal(full(e)["W0"], params["W0"])
    e.run_phase(Phase("free", 12))
    assert_same(saved(e, "free"), relax(model, full(e), x, 12))
    e.set_params({k: 0.5 * v for k, v in params.items()})  # new tensors: the old loops would read stale ones
    e.run_phase(Phase("free", 12))
    assert_same(saved(e, "free"), relax(model, full(e), x, 12))
    e.set_batch(x[:3], y[:3])  # another batch size: a loop of its own
    e.run_phase(Phase("free", 12))
    assert_same(saved(e, "free"), relax(model, full(e), x[:3], 12))


def test_a_new_batch_reaches_the_loop_through_its_fixed_buffers():
    """The same (batch size, beta) loop on a second batch: its clamped drive and target are copied in."""
    model = MODELS[1]
    params = scaled_params(model)
    e = engine(model, params)
    for seed in (0, 1):
        x, y = batch(model, seed=seed)
        e.set_batch(x, y)
        e.run_phase(Phase("free", 15))
        e.run_phase(Phase("plus", 12, 0.3, "free"))
        free = relax(model, params, x, 15)
        assert_same(saved(e, "plus"), relax(model, params, x, 12, free, 0.3, y))
    assert len(e.loops) == 2


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_inference_after_training_at_the_same_batch_size_gets_its_own_loop(model):
    """A free phase with y routed (training) and one without (inference) share batch size and beta, not a loop: the
    training loop's target buffer has nothing to copy from at inference (this failed `train` whenever the test
    set's chunk was as large as a training batch)."""
    params = scaled_params(model)
    e = engine(model, params)
    x, y = batch(model)
    e.train_batch(x, y, 0.2, 12, 4)
    assert_same([e.infer(x, 12)], [relax(model, e.get_params(), x, 12)[-1]])


def test_divergence_is_named_at_the_same_step_as_the_eager_path_checks_it():
    unstable = layered("energy", (4, 6, 3), "sigmoid", dt=2.5)
    e = engine(unstable, scaled_params(unstable))
    e.set_batch(*batch(unstable))
    with pytest.raises(RuntimeError) as fixed:
        e.run_phase(Phase("free", 57))
    with pytest.raises(RuntimeError) as recorded:
        e.run_phase(Phase("free", 57), record_states=True)  # the eager path, checked step by step
    assert str(fixed.value) == str(recorded.value)
    assert "step 57" not in str(fixed.value)  # it diverged at a chunk boundary before the last step


def test_chunks_and_capture_guard():
    s = [torch.zeros(2, 3, dtype=torch.float64)]
    loop = StaticLoop(lambda s: [s[0] + 1], s, 10)
    assert list(loop.chunks(23)) == [10, 20, 23]
    assert torch.equal(s[0], torch.full((2, 3), 23.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="capture needs CUDA tensors"):
        StaticLoop(lambda s: s, s, 10, capture=True)
    with pytest.raises(ValueError, match="K must be >= 1"):
        StaticLoop(lambda s: s, s, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA graph capture)")
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_cuda_graph_replay_equals_eager_kernels(model):
    """Runs only where torch sees a GPU: the captured engine against the same engine launching kernel by
    kernel, float64, through phases, an in-place update, a second batch and a rebinding of the parameters."""
    params = scaled_params(model)
    x, y = batch(model)
    x2, y2 = batch(model, seed=5)
    engines = [engine(model, params, device="cuda", capture=capture) for capture in (True, False)]
    for e in engines:
        e.train_batch(x, y, 0.2, 23, 7)
        e.train_batch(x2, y2, 0.2, 23, 7)
        e.set_params({k: 0.5 * v for k, v in params.items()})
        e.set_batch(x, y)
        e.run_phase(Phase("free", 23))
    graph, eager = engines
    assert graph.capture and graph.loops[(x.shape[0], 0.0)][0].graph is not None
    for sa, sb in zip(saved(graph, "free"), saved(eager, "free"), strict=True):
        torch.testing.assert_close(sa, sb, rtol=1e-12, atol=1e-14)
