"""What the fabric runtime reads, typed and with its one default each: the partition, the data plane, the host
actors' placement, the nodes' arithmetic and optimiser. The coordinator, the fabric and every host receive this object
(never a dict read with defaults); experiments/sections.py takes the defaults of its keys from here.

`FabricSettings.of(mapping)` builds one from keyword settings (the Python API and tests pass dicts): an unknown key is
a ValueError naming it and the closest known key.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from cluster.runtime.ports import MAX_BYTES


@dataclass(frozen=True)
class FabricSettings:
    lr: tuple = (0.1,)             # learning rate per layer pair (model.lr_index), as the run's `lr`
    lrs: dict | None = None        # per parameter (cluster/runtime/coordinator.lrs_by_param): set by the coordinator
    dtype: str = "float32"         # the nodes' real arithmetic (complex phases use its complex counterpart)
    granularity: str = "layer"     # the partition: one node per layer (cut in `split` blocks) or per neuron
    split: int = 1                 # blocks per layer with granularity=layer
    hosts: int = 0                 # Ray actors hosting the logical nodes (round-robin); 0: one per node
    exchange: str = "auto"         # messages (one per port per step), frames (one per host pair per step), auto
    transport: str = "zmq"         # zmq (the data plane), ray (actor calls, a baseline); "local" inside tests
    host: str = "127.0.0.1"        # data-plane bind address (loopback by default)
    wire: str = "auto"             # zmq socket kind: ipc, tcp, or auto (ipc when host is loopback)
    curve: bool = False            # ZeroMQ CURVE (encrypted, keys per connection) instead of PLAIN
    ports: tuple | None = None     # (lo, hi): the tcp data plane binds a port in this range (None: any)
    log: str = "counters"          # message log: "full" records or "counters"
    timeout_s: float = 60.0        # every wait for a neighbour's message
    max_message_bytes: int = MAX_BYTES  # the largest payload a message may carry
    actor_cpus: float = 0.0        # Ray CPUs reserved per host actor
    placement: str = "pack"        # Ray placement group strategy for the host actors: pack or spread
    resources: dict | None = None  # custom Ray resources per host actor
    reuse_hosts: bool = True       # park a cleanly closed fabric's hosts for the next fabric of its shape
    optimizer: str = "sgd"         # the nodes' optimiser (nodes/optim.py)
    momentum: float = 0.0          # sgd's heavy-ball momentum
    forget_free: bool = False      # audit only: the free-phase-memory test
    noise: float = 0.0             # std of Gaussian noise on every pre-activation (nodes/noise.py)
    seed: int = 0                  # keys the noise
    residual_tol: float | None = None  # the convergence gate (None: off)
    diverge_limit: float = 1e6     # a state beyond this magnitude is a divergence error naming node and step

    @classmethod
    def of(cls, settings) -> "FabricSettings":
        if isinstance(settings, cls):
            return settings
        names = [f.name for f in dataclasses.fields(cls)]
        for k in settings:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"fabric setting {k!r} is not one of {names}{hint}")
        data = dict(settings)
        for k in ("lr", "ports"):
            if isinstance(data.get(k), list):
                data[k] = tuple(data[k])
        return cls(**data)

    def replace(self, **changes) -> "FabricSettings":
        return dataclasses.replace(self, **changes)

    @property
    def frames(self) -> bool:
        """Whether the data plane is frames: `exchange`, where "auto" means frames when hosts run many nodes."""
        if self.exchange == "auto":
            return self.hosts > 0
        if self.exchange not in ("messages", "frames"):
            raise ValueError(f"fabric.exchange: expected 'auto', 'messages' or 'frames', got {self.exchange!r}")
        return self.exchange == "frames"


DEFAULTS = FabricSettings()
