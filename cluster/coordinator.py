"""The coordinator: builds the fabric, triggers phases, feeds the boundary. It never computes a state or
an update; it gathers local updates only for audits and checkpoints (DESIGN.md).

`FabricEngine` has the engine API of `ReferenceEngine` (set_params, get_params, set_batch, run_phase,
update, output), so experiments and tests run unchanged on either.
"""
from __future__ import annotations

import torch

from cluster.fabric import Fabric, make_specs
from cluster.messages import pack_arrays, unpack_arrays
from protocols import get_protocol


class FabricEngine:
    name = "fabric"

    def __init__(self, model, settings: dict, local: bool = False):
        self.model = model
        self.settings = settings
        self.specs = make_specs(model, settings)
        self.blocks = {s.block.node_id: s.block for s in self.specs}
        self.output_ids = [i for i, b in self.blocks.items() if b.layer == model.N]
        self.fabric = Fabric(self.specs, settings.get("actor_cpus", 0.0), settings.get("timeout_s", 60.0), local)
        self.protocol = get_protocol(settings["protocol"])

    # ---- parameters (the coordinator slices once at set-up and assembles for audits/checkpoints) -----
    def set_params(self, params: dict) -> None:
        self.fabric.call("set_params", per_node={
            i: (pack_arrays(self.model.block_params(b, params)),) for i, b in self.blocks.items()})

    def _held(self) -> dict:
        return {i: unpack_arrays(p) for i, p in self.fabric.call("get_params").items()}

    def _assemble(self, held: dict, role: str = "primary") -> dict:
        shapes = self.model.param_shapes()
        dtype = next(iter(next(iter(held.values())).values())).dtype
        full = {k: torch.zeros(v, dtype=dtype) for k, v in shapes.items()}
        for i, b in self.blocks.items():
            for local, (name, rows, cols, r) in self.model.held(b).items():
                if r != role:
                    continue
                if cols is None:
                    full[name][rows] = held[i][local]
                else:
                    full[name][rows, cols] = held[i][local]
        return full

    def get_params(self) -> dict:
        return self._assemble(self._held())

    def replica_drift(self) -> dict:
        """max |primary - replica| per symmetric weight (both ends of an edge hold a copy)."""
        held = self._held()
        prim, repl = self._assemble(held, "primary"), self._assemble(held, "replica")
        return {k: float((prim[k] - repl[k]).abs().max()) for k in prim if k.startswith("W") and k != "W0"}

    # ---- boundary and phases --------------------------------------------------------------------------
    def _boundary(self, x, y=None) -> dict:
        """{node: (B, packed x and/or y slice)}: x to the input layer's nodes, y to the output layer's."""
        x = torch.as_tensor(x)
        per_node = {}
        for i, b in self.blocks.items():
            arrays = {}
            if b.layer == 1:
                arrays["x"] = x
            if b.layer == self.model.N and y is not None:
                arrays["y"] = torch.as_tensor(y)[:, b.lo:b.hi]
            per_node[i] = (x.shape[0], pack_arrays(arrays) if arrays else b"")
        return per_node

    def set_batch(self, x, y=None) -> None:
        self.fabric.call("set_boundary", per_node=self._boundary(x, y))

    def train_batch(self, x, y, beta: float, T1: int, T2: int):
        """One control call per node for a whole batch (boundary, phase schedule, local update); returns the
        free phase's output. Same effect as set_batch + run_schedule + output + update(gather=False)."""
        serial = self.fabric.new_serials(len(self.protocol.phases))
        res = self.fabric.call("run_batch", per_node={i: (serial, B, packed, float(beta), int(T1), int(T2))
                                                      for i, (B, packed) in self._boundary(x, y).items()})
        return self._output_of(res)

    def infer(self, x, steps: int):
        """One control call per node: the input and a free phase; returns the output layer's state."""
        serial = self.fabric.new_serials()
        res = self.fabric.call("infer", per_node={i: (serial, B, packed, int(steps))
                                                  for i, (B, packed) in self._boundary(x).items()})
        return self._output_of(res)

    def _output_of(self, res: dict):
        return torch.cat([unpack_arrays(res[i])["s"] for i in self._layer(self.model.N)], dim=1)

    def run_phase(self, name, steps, beta, start, record_states=False, record_grads=False) -> dict:
        """One call per node for the whole phase; returns what was recorded, assembled per layer."""
        res = self.fabric.call("run_phase", self.fabric.new_serials(), name, int(steps), float(beta), start,
                               record_states, record_grads)
        out = {"residual": max(r["residual"] for r in res.values())}
        if record_states:
            out["states"] = [torch.cat([unpack_arrays(res[i]["states"])["s"] for i in self._layer(n)], dim=2)
                             for n in range(1, self.model.N + 1)]
        if record_grads:
            out["grad_steps"] = self._assemble_series({i: unpack_arrays(r["grad_steps"]) for i, r in res.items()})
        return out

    def _layer(self, n):
        return sorted((i for i, b in self.blocks.items() if b.layer == n), key=lambda i: self.blocks[i].lo)

    def _assemble_series(self, held: dict) -> dict:
        """Assemble the owners' (primary) tensors with a leading time axis."""
        T = next(iter(next(iter(held.values())).values())).shape[0]
        steps = [self._assemble({i: {k: v[t] for k, v in h.items()} for i, h in held.items()}) for t in range(T)]
        return {k: torch.stack([s[k] for s in steps]) for k in steps[0]}

    def update(self, beta: float, apply: bool = True, gather: bool = True):
        """Every node applies its own local rule; with `gather`, return the estimate g_hat (owners' copies)."""
        res = self.fabric.call("update", float(beta), apply, gather)
        return self._assemble({i: unpack_arrays(r) for i, r in res.items()}) if gather else None

    def output(self, name: str = "free"):
        return self._output_of(self.fabric.call("output", name, nodes=self.output_ids))

    def message_logs(self, clear: bool = False) -> dict:
        return self.fabric.call("message_log", clear)

    def get_state(self) -> dict:
        return self.fabric.call("get_state")

    def set_state(self, states: dict) -> None:
        self.fabric.call("set_state", per_node={i: (s,) for i, s in states.items()})

    def close(self) -> None:
        self.fabric.close()
