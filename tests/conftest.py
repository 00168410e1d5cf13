"""One Ray instance per test session (2 CPUs), always shut down; small float64 networks."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def ray_session():
    import ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield ray
    finally:
        ray.shutdown()


def batch(model, B=6, seed=0, dtype=torch.float64):
    """A random input batch and one-hot targets for `model`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, model.sizes[0], generator=g, dtype=dtype)
    y = torch.nn.functional.one_hot(torch.randint(0, model.sizes[-1], (B,), generator=g),
                                    model.sizes[-1]).to(dtype)
    return x, y


def scaled_params(model, seed=1, scale=2.0):
    """Initial weights scaled up so gradients are O(0.1) (relative comparisons are then meaningful)."""
    return {k: v * scale for k, v in model.init_params(seed).items()}


def run_cli(*args, timeout=300):
    import subprocess
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
