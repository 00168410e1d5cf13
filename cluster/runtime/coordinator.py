"""The coordinator: builds the fabric, walks the phase program, feeds the boundary. It never computes a state or an
update; it gathers local updates only for audits and checkpoints (DESIGN.md).

`FabricEngine` has the engine interface of cluster/engine.py. It routes boundary signals by the model's
declaration: x to the nodes whose drive reads the clamped input, each output node its slice of y; beta, the batch
size and the protocol go to every node as global signals. One call per host per phase, or per training batch.
"""
from __future__ import annotations

import torch

from cluster.engine import Engine
from cluster.runtime.fabric import Fabric
from cluster.runtime.settings import FabricSettings
from cluster.messages import pack_arrays, unpack_arrays
from cluster.nodeset import per_sample_max
from nodes.graph import slice_params, target_of
from protocols import get_protocol


def lrs_by_param(model, lr: list) -> dict:
    """{parameter: learning rate}: lr[i] for the parameters of layer pair i (model.lr_index); 0 for the model's
    frozen parameters (Model.frozen)."""
    frozen = set(model.frozen)
    return {p: 0.0 if p in frozen else float(lr[model.lr_index.get(p, 0)]) for p in model.param_shapes()}


class FabricEngine(Engine):
    name = "fabric"

    def __init__(self, model, protocol, settings, local: bool = False):
        """settings: a FabricSettings (cluster/runtime/settings.py) or a mapping of its fields."""
        proto = get_protocol(protocol)
        settings = FabricSettings.of(settings)
        specs = model.node_specs(model.partition(settings.granularity, settings.split),
                                 proto.ports)
        super().__init__(model, proto, specs)
        hs = settings.replace(lrs=lrs_by_param(model, settings.lr))
        if not local:
            from cluster.runtime.ray_setup import ship_by_value
            ship_by_value(self.protocol, *(r for r in (model.rule, self.protocol.rule) if r),
                          *{type(it) for it in model.interactions})  # an interaction defined outside nodes/
        self.fabric = Fabric(specs, self.protocol, hs, local)
        self.batch = 0

    def _per_host(self, per_node: dict, *before, after=()) -> dict:
        """{host: (*before, {node: value for its nodes}, *after)}."""
        return {h: (*before, {i: per_node[i] for i in nodes if i in per_node}, *after)
                for h, nodes in self.fabric.by_host.items()}

    def _boundary_per_host(self, x, y, *before, after=()) -> dict:
        """{host: (*before, (blobs, {node: index of its blob}), *after)}: the boundary of each host's nodes with each
        distinct packed object once (x alone, shared by every node fed x only, travels once per host, not per node)."""
        per_node, out = self._boundary(x, y), {}
        for h, nodes in self.fabric.by_host.items():
            index = {}  # id of a packed object -> its place in this host's list
            which = {i: index.setdefault(id(per_node[i]), len(index)) for i in nodes if i in per_node}
            blobs = {k: per_node[i] for i, k in which.items()}
            out[h] = (*before, ([blobs[k] for k in range(len(blobs))], which), *after)
        return out

    def _merged(self, method: str, *args, per_host=None) -> dict:
        res = self.fabric.call(method, *args, per_host=per_host)
        return {i: v for r in res.values() if r for i, v in r.items()}

    # ---- parameters and checkpoints ----------------------------------------------------------------------
    def set_params(self, params: dict) -> None:
        packed = {i: pack_arrays(slice_params(s, params)) for i, s in self.specs.items()}
        self.fabric.call("set_params", per_host=self._per_host(packed))

    def _held(self) -> dict:
        return {i: unpack_arrays(p) for i, p in self._merged("get_params").items()}

    def _estimates(self) -> dict:
        return {i: unpack_arrays(p) for i, p in self._merged("estimate").items()}

    def get_state(self) -> dict:
        return self._merged("get_state")

    def set_state(self, states: dict) -> None:
        self.fabric.call("set_state", per_host=self._per_host(states))

    # ---- boundary and phases -------------------------------------------------------------------------------
    def _boundary(self, x, y=None) -> dict:
        """{node: packed arrays}: x where the model routes it, each output node its slice of y. The nodes that get
        x alone share one packed object (serialised once per host call, unpacked once per host)."""
        x = torch.as_tensor(x)
        x_only = None
        per_node = {}
        for i, s in self.specs.items():
            with_y = "y" in s.boundary and y is not None
            if "x" in s.boundary and not with_y:
                x_only = x_only or pack_arrays({"x": x})
                per_node[i] = x_only
                continue
            arrays = {"x": x} if "x" in s.boundary else {}
            if with_y:
                arrays["y"] = target_of(s, torch.as_tensor(y))
            per_node[i] = pack_arrays(arrays) if arrays else b""
        return per_node

    def set_batch(self, x, y=None, draw=None) -> None:
        self.batch = int(torch.as_tensor(x).shape[0])
        self.fabric.call("set_batch", per_host=self._boundary_per_host(x, y, self.batch, after=(draw,)))

    def begin(self) -> None:
        self.fabric.call("begin")

    def update(self) -> None:
        self.fabric.call("update")

    def run_phase(self, phase, record_states: bool = False, record_grads: bool = False) -> dict:
        """One call per host for the whole phase; returns what was recorded, assembled per group."""
        res = self._merged("run_phase", self.fabric.new_serials(), phase, record_states, record_grads)
        per_sample = per_sample_max(v["residual"] for v in res.values())
        node = max(res, key=lambda i: max(res[i]["residual"], default=0.0))
        out = {"residual": max(per_sample, default=0.0), "residuals": per_sample, "node": node}
        if record_states:
            rec = {i: unpack_arrays(r["states"]) for i, r in res.items()}
            out["states"] = self._groups({i: v["s"] for i, v in rec.items()}, dim=-1)
            out["signals"] = {i: rec[i]["a"] for i in self.specs}
        if record_grads:
            out["grad_steps"] = self._series({i: unpack_arrays(r["grad_steps"]) for i, r in res.items()})
        return out

    def _run_batch(self, x, y, program, draw=None, apply: bool = True) -> tuple:
        """One control call per host for a whole batch (boundary, program, local update if `apply`): the same effect
        as set_batch + run_program + update, returning (the output's prediction, per-phase per-sample residuals)."""
        serial = self.fabric.new_serials(len(program))
        B = int(torch.as_tensor(x).shape[0])
        res = self.fabric.call("run_batch", per_host=self._boundary_per_host(x, y, serial, B,
                                                                            after=(program, apply, draw)))
        out = self._output_of({i: unpack_arrays(v)["s"] for r in res.values() for i, v in r["out"].items()})
        residuals = {ph.name: torch.tensor(per_sample_max(r["residuals"][ph.name] for r in res.values()),
                                           dtype=torch.float64) for ph in program}
        return out, residuals

    def output(self, name: str = "free"):
        return self._output_of({i: unpack_arrays(v)["s"] for i, v in self._merged("output", name).items()})

    def states(self, name: str) -> list:
        """Every dynamic group's saved state of phase `name`, the nodes' side by side (audits)."""
        return self._groups({i: unpack_arrays(v)["s"] for i, v in self._merged("saved_states", name).items()}, dim=-1)

    def kept_bytes(self) -> dict:
        return self._merged("kept")

    def accumulators(self) -> dict:
        return {i: unpack_arrays(v) for i, v in self._merged("accumulators").items()}

    def lineage(self) -> dict:
        return self._merged("lineage")

    def message_logs(self, clear: bool = False) -> dict:
        res = self.fabric.call("message_log", clear)
        return {"nodes": {i: log for r in res.values() for i, log in r["nodes"].items()},
                "refused": [dict(x, host=h) for h, r in res.items() for x in r["refused"]],
                "unknown": [dict(x, host=h) for h, r in res.items() for x in r["unknown"]],
                "placement": dict(self.fabric.placement)}

    def close(self) -> None:
        self.fabric.close()
