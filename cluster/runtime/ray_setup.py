"""Starting Ray for a fabric: a local instance bound to loopback by default, or a cluster's address; and shipping
code defined outside the installed packages to the actors by value."""
from __future__ import annotations

import logging
import os


def init_ray(address=None, num_cpus=None) -> None:
    """A local Ray by default, loopback only (see `_loopback_only`), no dashboard. `address` (auto, HOST:PORT,
    ray://HOST:PORT) joins a cluster started from ray_config.yaml; no runtime_env is sent: the launcher's
    setup_commands install this project on every node, so the workers import the same code as the driver."""
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
    else:
        _loopback_only()
        # a new local instance authenticates its clients with a token (Ray's default); its notice saying so asks
        # nothing of the user, so it stays off the terminal
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING,
                 _node_ip_address="127.0.0.1")  # "local": a new instance, never one another run left running


def _loopback_only() -> None:
    """Keep a local Ray's control plane on 127.0.0.1. Ray 2.60 turns a loopback node address into the machine's own
    address, and its GCS, raylet and workers then listen on every interface; with clusters switched off (the flag
    Ray itself uses on macOS and Windows) the node address stays 127.0.0.1 and every server binds loopback. The flag
    is read when ray is imported, so the module constant is set too; the child processes read the variable."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False


def ship_by_value(*objects) -> None:
    """Code defined outside the installed packages (a protocol or a model's rule class in a test file, a script, a
    notebook) travels to the actors by value: Ray's cloudpickle is told to serialise its module's code instead of a
    reference the workers might not import (the control plane; the data plane never pickles)."""
    import sys

    from ray import cloudpickle
    for obj in objects:
        cls = obj if isinstance(obj, type) else type(obj)
        mod = cls.__module__
        if mod.split(".")[0] in ("protocols", "nodes", "cluster", "experiments", "builtins") or mod == "__main__":
            continue  # installed packages go by reference, __main__ by value already
        if mod in sys.modules:
            cloudpickle.register_pickle_by_value(sys.modules[mod])
