"""Building and tearing down the fabric on Ray: one actor per block, connected to its graph neighbours only.

`NodeActor` (nodes/node.py) is a plain class wrapped here with `ray.remote`. On ZeroMQ an actor runs one
call at a time, on its main thread, and an abort reaches it as a message on its socket. (A threaded Ray actor
runs calls on a pool thread while its main thread wakes every 10 ms for Ray's signal check; with many actors
per core that slowed every step.) With the Ray transport the actor is threaded so that `deliver` and `abort`
run beside `run_phase`. `call` issues one call per node and gathers once; a failure is mapped to its node and
the other nodes are aborted, so a failed phase never hangs.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import ray
import zmq

from cluster.messages import encode_abort
from nodes.model import COORDINATOR
from nodes.node import NodeActor, NodeSpec

PHASE_METHODS = ("run_phase", "run_batch", "infer")  # their first argument is the phase serial


class FabricError(RuntimeError):
    """A fabric phase failed; the message names the node (and phase and step when known)."""


def _cause(err) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    return text[-1] if text else repr(err)


class Fabric:
    def __init__(self, specs: list, actor_cpus: float = 0.0, timeout_s: float = 60.0, local: bool = False):
        """Start one node per spec (a Ray actor, or in-process objects when `local`), then connect neighbours."""
        self.specs = {s.block.node_id: s for s in specs}
        self.timeout_s = timeout_s
        self.local = local
        self.serial = 0          # the highest phase serial issued: an abort stops every phase up to it
        self.abort_push = {}     # node -> PUSH socket for aborts on the data plane, made at the first abort
        self.endpoints = {}
        t0 = time.perf_counter()
        if local:
            self.nodes = {i: NodeActor(s) for i, s in self.specs.items()}
        else:
            threaded = any(s.transport != "zmq" for s in specs)
            Actor = ray.remote(NodeActor).options(num_cpus=actor_cpus, max_concurrency=4 if threaded else 1,
                                                  max_restarts=0)
            self.nodes = {i: Actor.remote(s) for i, s in self.specs.items()}
        endpoints = self.call("endpoint", timeout_s=max(120.0, 10.0 * len(self.nodes)))
        self.start_s = time.perf_counter() - t0
        self.endpoints = {i: (self.nodes[i] if e is None else e) for i, e in endpoints.items()}
        self.call("connect", per_node={i: ({p: self.endpoints[p] for p, _ in s.pre + s.post},)
                                       for i, s in self.specs.items()})

    def new_serials(self, n: int = 1) -> int:
        """The first of n fresh phase serials (above every serial issued, aborted ones included)."""
        self.serial += n
        return self.serial - n + 1

    def call(self, method: str, *args, per_node: dict | None = None, nodes=None, timeout_s=None) -> dict:
        """Call `method` on every node (or on `nodes`) once, gather once; {node id: result}."""
        ids = list(per_node) if per_node is not None else list(nodes or self.nodes)
        argv = {i: (per_node[i] if per_node is not None else args) for i in ids}
        if method in PHASE_METHODS:
            self.serial = max(self.serial, *(int(a[0]) for a in argv.values()))
        if self.local:  # in-process nodes, one thread each (tests and debugging without Ray)
            with ThreadPoolExecutor(max_workers=len(ids)) as pool:
                futures = {i: pool.submit(getattr(self.nodes[i], method), *argv[i]) for i in ids}
                try:
                    return {i: f.result() for i, f in futures.items()}
                except Exception as err:
                    self.abort()
                    raise FabricError(f"{method} failed: {type(err).__name__}: {err}") from None
        refs = [getattr(self.nodes[i], method).remote(*argv[i]) for i in ids]
        owner = dict(zip(refs, ids))
        timeout = timeout_s or self.timeout_s + 30.0
        try:  # one gather; it returns early on the first failure
            return dict(zip(ids, ray.get(refs, timeout=timeout)))
        except ray.exceptions.GetTimeoutError:
            self.abort()
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
            raise FabricError(f"{method}: no answer from nodes {sorted(owner[r] for r in pending)} "
                              f"within {timeout:g} s") from None
        except Exception as err:  # map the failure to its node (before the abort makes others fail), stop the rest
            ready, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
            self.abort()
            node, err = next(self._failures(owner, ready), ("(unknown)", err))
            ray.wait(pending, num_returns=len(pending), timeout=10.0)
            raise FabricError(f"node {node}: {method} failed: {_cause(err)}") from None

    @staticmethod
    def _failures(owner: dict, ready):
        """(node, error) for each failed result among `ready`; `owner` maps a result to its node."""
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as err:
                yield owner[ref], err

    def abort(self) -> None:
        """Stop every phase up to the highest serial issued: a message on a ZeroMQ node's socket (its actor runs
        one call at a time), else the node's `abort` (in-process nodes, threaded actors)."""
        for i, n in self.nodes.items():
            address = self.endpoints.get(i) if self.specs[i].transport == "zmq" else None
            if address:
                try:
                    self._abort_socket(i, address).send_multipart([encode_abort(COORDINATOR, self.serial), b""],
                                                                  zmq.NOBLOCK)
                except zmq.Again:  # its queue is full: the node is not reading, its phase times out on its own
                    pass
            elif self.local:
                n.abort(self.serial)
            else:
                n.abort.remote(self.serial)

    def _abort_socket(self, node: str, address: str):
        sock = self.abort_push.get(node)
        if sock is None:
            sock = self.abort_push[node] = zmq.Context.instance().socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(address)
        return sock

    def close(self) -> None:
        try:
            if self.local:
                for n in self.nodes.values():
                    n.close()
            else:
                refs = {n.close.remote(): n for n in self.nodes.values()}
                closed, stuck = ray.wait(list(refs), num_returns=len(refs), timeout=10)
                for r in closed:  # sockets closed: the actor exits on its own, after its queued calls
                    refs[r].__ray_terminate__.remote()
                for r in stuck:
                    ray.kill(refs[r])
        finally:
            self.nodes = {}
            for sock in self.abort_push.values():
                sock.close()
            self.abort_push = {}


def make_specs(model, cfg_fabric: dict) -> list:
    """NodeSpecs for every block of the partition, with neighbour widths and per-tensor learning rates."""
    blocks = model.partition(cfg_fabric["granularity"], cfg_fabric.get("split", 1))
    by_id = {b.node_id: b for b in blocks}
    nbrs = model.neighbours(blocks)
    lr = cfg_fabric["lr"]
    specs = []
    for b in blocks:
        pre = tuple((i, by_id[i].width) for i in nbrs[b.node_id] if by_id[i].layer == b.layer - 1)
        post = tuple((i, by_id[i].width) for i in nbrs[b.node_id] if by_id[i].layer == b.layer + 1)
        lrs = {"W_in": lr[b.layer - 1], "b_in": lr[b.layer - 1]}
        if b.layer < model.N:
            lrs["W_out"] = lr[b.layer]
        specs.append(NodeSpec(
            model=model, block=b, pre=pre, post=post, protocol=cfg_fabric["protocol"], dtype=cfg_fabric["dtype"],
            lrs=lrs, optimizer=cfg_fabric.get("optimizer", "sgd"), momentum=cfg_fabric.get("momentum", 0.0),
            transport=cfg_fabric.get("transport", "zmq"), host=cfg_fabric.get("host", "127.0.0.1"),
            wire=cfg_fabric.get("wire", "auto"),
            log_mode=cfg_fabric.get("log", "counters"), timeout_s=cfg_fabric.get("timeout_s", 60.0)))
    return specs
