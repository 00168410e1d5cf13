"""One Ray instance per test session (2 CPUs), always shut down; small float64 networks."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _start_ray():
    """The session's one Ray instance (2 CPUs, loopback), started once: by the first test that asks for it or the
    first command line run in process that builds a fabric."""
    import ray
    if ray.is_initialized():
        return ray
    from cluster.runtime.ray_setup import _loopback_only
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _loopback_only()  # as a local run: Ray's servers on 127.0.0.1 only
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # a new instance, whatever else runs Ray on this machine
    return ray


@pytest.fixture(scope="session", autouse=True)
def _ray_shut_down_at_the_end():
    yield
    import ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_session():
    return _start_ray()


def batch(model, B=6, seed=0, dtype=torch.float64):
    """A random input batch and one-hot targets for `model` (sizes of its input and output groups)."""
    g = torch.Generator().manual_seed(seed)
    d_in = next(gr.size for gr in model.groups if gr.role == "input")
    d_out = model.output_group.size
    x = torch.rand(B, d_in, generator=g, dtype=dtype)
    y = torch.nn.functional.one_hot(torch.randint(0, d_out, (B,), generator=g), d_out).to(dtype)
    return x, y


def scaled_params(model, seed=1, scale=2.0):
    """Initial weights scaled up so gradients are O(0.1) (relative comparisons are then meaningful)."""
    return model.init_params(seed, torch.float64, scale)


def lrs(model, lr=0.1):
    return {p: lr for p in model.param_shapes()}


def rel(a, b):
    return float((a - b).norm() / b.norm())


def estimate_once(engine, params, x, y, beta, T1, T2):
    """The engine's estimate after one program on (x, y) from `params`; the engine is closed afterwards."""
    try:
        engine.set_params(params)
        engine.set_batch(x, y)
        engine.run_program(engine.program(beta, T1, T2))
        return engine.estimate()
    finally:
        engine.close()


def run_cli(*args, timeout=300):
    """`python -m experiments ARGS` run in this process (experiments.__main__.main, with the session's Ray): what a
    subprocess would give, its exit status and its stdout and stderr, without a new interpreter and a new Ray per
    call. `timeout` is the subprocess form's (cli_subprocess); here the test's own timeout applies."""
    import contextlib
    import io
    import subprocess
    import traceback

    import cluster.launch
    import experiments.bench
    from experiments.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    starts = [(m, m.init_ray) for m in (cluster.launch, experiments.bench)]
    try:
        for m, _ in starts:  # where a command starts Ray, it gets the session's instance (started then, if not yet)
            m.init_ray = lambda address=None, num_cpus=None: _start_ray() and None
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 2
            except Exception:  # what an uncaught error does to a process: a traceback and status 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(cwd)
        for m, real in starts:
            m.init_ray = real
    return subprocess.CompletedProcess(["python", "-m", "experiments", *args], code, out.getvalue(), err.getvalue())


def cli_subprocess(*args, timeout=300, env=None):
    """`python -m experiments ARGS` in a new interpreter: for what only a process shows (signals, a fresh import)."""
    import subprocess
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_png(path, min_width: int = 300, min_height: int = 200) -> None:
    """path is a drawn PNG: an image of at least min_width x min_height pixels that is not one flat colour."""
    import matplotlib.image
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] >= min_height and img.shape[1] >= min_width, (path, img.shape)
    assert float(img[..., :3].std()) > 0.01, (path, "a blank canvas")
