"""Building and tearing down the fabric on Ray: logical nodes placed on host actors, connected to the hosts of their
graph neighbours only, with one credential per directed connection.

`Host` (cluster/runtime/host.py) is a plain class wrapped here with `ray.remote`. `fabric.hosts = K` places the logical
nodes round-robin on K hosts (NEST's way of spreading neurons over virtual processes); 0 gives each node a host of
its own. On ZeroMQ a host runs one call at a time, on its main thread, and an abort reaches it as a message from the
coordinator on its socket. (A threaded Ray actor runs calls on a pool thread while its main thread wakes every
10 ms for Ray's signal check; with many actors per core that slowed every step.) With the Ray transport the actor
is threaded so that `deliver` runs beside its phases.

`call` issues one call per host and waits for all of them; a failure is mapped to its host's nodes and the other
hosts are aborted, so a failed phase never hangs. There is no fixed deadline on a call: a host in a phase sends a
heartbeat at least every second, and a call fails when a host has not been heard from for `timeout_s` + 30 s,
however long the work itself takes.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import ray

from cluster.runtime.host import Host
from cluster.runtime.message_log import COORDINATOR
from cluster.messages import MessageError, decode_header, encode_control
from cluster.nodeset import PhaseError
from cluster.runtime.settings import FabricSettings
from cluster.runtime.placement import bundle, bundle_options, host_order, place_hosts
from cluster.runtime.transport import TransportError, ZmqTransport, new_token
from cluster.runtime.warm import WARM, end_group, warm_key

GRACE_S = 30.0


class FabricError(PhaseError):
    """A fabric call failed; the message names the node (and phase and step when known). A PhaseError, as the
    in-process engine's errors are, so callers catch one type on either engine."""


class HostLost(FabricError):
    """A host actor died (its process exited or was killed): the fault a run recovers from by rollback and
    replay (experiments/recovery.py). `host` names it."""

    def __init__(self, msg: str, host: str):
        super().__init__(msg)
        self.host = host


def _cause(err) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    return text[-1] if text else repr(err)


def exchange_of(settings) -> str:
    """`fabric.exchange`: "messages" (one per port per step) or "frames" (one per host pair per step,
    cluster/runtime/exchange.py); "auto": frames where hosts run many nodes (`fabric.hosts` >= 1)."""
    return "frames" if FabricSettings.of(settings).frames else "messages"


def place(node_ids, hosts: int) -> dict:
    """node -> host id: each node its own host (hosts = 0), else round-robin over `hosts` hosts `H0`, `H1`, ..."""
    if hosts <= 0:
        return {i: i for i in node_ids}
    return {i: f"H{k % hosts}" for k, i in enumerate(node_ids)}


class Fabric:
    def __init__(self, specs: dict, protocol, settings: FabricSettings, local: bool = False):
        """Start the hosts (Ray actors, or in-process objects run as threads when `local`), then connect each to
        the hosts of its nodes' neighbours, and every host to the coordinator (aborts and heartbeats)."""
        self.specs, self.settings, self.local = specs, settings, local
        self.timeout_s = float(settings.timeout_s)
        self.placement = place(list(specs), int(settings.hosts))
        self.exchange = exchange_of(settings)
        self.by_host = {}
        for i, h in self.placement.items():
            self.by_host.setdefault(h, {})[i] = specs[i]
        self.serial = 0  # the highest phase serial issued: an abort stops every phase up to it
        self.transport = settings.transport
        self.beats = ZmqTransport(COORDINATOR, settings.host, settings.wire,
                                  send_timeout_s=5.0,  # an abort to a host that is gone must not hold the caller
                                  ports=settings.ports, curve=settings.curve)
        self.hosts, self.abort_tokens, self.addresses, self.lost, self.pg = {}, {}, {}, set(), None
        self.closed = self.failed = False
        self.warm_key, self.warm, self.spare = None, False, []
        try:
            self._start(protocol)
        except BaseException:
            self.close()
            raise

    def _start(self, protocol) -> None:
        t0 = time.perf_counter()
        hs = self.settings.replace(transport="local" if self.local else self.transport, exchange=self.exchange)
        links = self._links()
        if self.local:
            self.hosts = {h: Host(h, s, protocol, hs, threads=None) for h, s in self.by_host.items()}
        else:
            self.bundle_order = host_order(list(self.by_host), links)  # host k holds bundle k
            concurrency = 1 if self.transport == "zmq" else 4
            self.warm_key = warm_key(self.settings, concurrency)
            if not self._rebuild_warm(protocol, hs, concurrency):
                self.pg, options = place_hosts(self.bundle_order, self.settings, wait_s=max(120.0, self.timeout_s))
                self.hosts = {h: _new_host(h, self.by_host[h], protocol, hs, concurrency, options[h])
                              for h in self.by_host}
        addresses = self.call("endpoint", stall_s=max(120.0, 10.0 * len(self.hosts)))
        self.start_s = time.perf_counter() - t0
        self.addresses = {h: (self.hosts[h] if a is None else a) for h, a in addresses.items()}
        curve = self.settings.curve
        tokens = {(a, b): new_token(curve) for a, b in links if a != b}
        coord = {h: new_token(curve) for h in self.hosts}   # the coordinator's credential at each host
        beat = {h: new_token(curve) for h in self.hosts}    # each host's credential at the coordinator
        self.beats.admit(beat)
        self.abort_tokens = coord
        self.call("admit", per_host={h: ({a: tok for (a, b), tok in tokens.items() if b == h}
                                         | {COORDINATOR: coord[h]},) for h in self.hosts})
        args = {h: ({b: (self.addresses[b], tok) for (a, b), tok in tokens.items() if a == h}, self.placement,
                    (self.beats.endpoint, beat[h])) for h in self.hosts}
        self.call("connect", per_host=args)
        if self.transport == "zmq" and not self.local:
            for h in self.hosts:
                self.beats.connect(h, self.addresses[h], coord[h])

    def _rebuild_warm(self, protocol, hs, concurrency: int) -> bool:
        """Host this fabric on a parked group (cluster/runtime/warm.py), if there is one that answers: its parked
        actors are rebuilt, and a bundle whose actor was lost gets a new one; a group that does not answer is
        ended, and the fabric starts new hosts."""
        parked = WARM.take(self.warm_key, len(self.bundle_order)) if self.warm_key else None
        if parked is None:
            return False
        self.pg, actors = parked
        n = len(self.bundle_order)
        self.spare = actors[n:]  # the group's bundles this fabric does not use (None: lost while it was used)
        self.hosts, new = {}, set()
        for k, h in enumerate(self.bundle_order):
            if actors[k] is None:  # its actor was lost: a new one in its bundle
                self.hosts[h] = _new_host(h, self.by_host[h], protocol, hs, concurrency,
                                          bundle_options(self.pg, k, bundle(self.settings)))
                new.add(h)
            else:
                self.hosts[h] = actors[k]
        try:
            self.call("rebuild", per_host={h: (h, self.by_host[h], protocol, hs) for h in self.hosts if h not in new},
                      stall_s=max(120.0, 10.0 * len(self.hosts)))
            self.warm = True
            return True
        except FabricError:
            end_group(self.pg, [a for a in [*self.hosts.values(), *self.spare] if a is not None])
            self.hosts, self.spare, self.pg, self.lost, self.failed = {}, [], None, set(), False
            return False

    def _links(self) -> set:
        """(host, host) for every port between nodes: the connections the data plane needs."""
        return {(self.placement[p.src], self.placement[p.dst]) for s in self.specs.values() for p in s.out_ports}

    def new_serials(self, n: int = 1) -> int:
        """The first of n fresh phase serials (above every serial issued, aborted ones included)."""
        self.serial += n
        return self.serial - n + 1

    def call(self, method: str, *args, per_host: dict | None = None, stall_s: float | None = None) -> dict:
        """Call `method` on every host (with the same args, or per_host {host: args}); {host: result}. A host that
        has neither answered nor sent a heartbeat for `stall_s` (default timeout_s + 30 s) fails the call."""
        argv = per_host if per_host is not None else {h: args for h in self.hosts}
        stall = stall_s or self.timeout_s + GRACE_S
        if self.local:
            return self._call_local(method, argv)
        refs = {getattr(self.hosts[h], method).remote(*a): h for h, a in argv.items()}
        seen = {h: time.monotonic() for h in argv}
        pending, results = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for r in ready:
                try:
                    results[refs[r]] = ray.get(r)
                except Exception as err:  # map the failure to its host's nodes, stop the rest
                    self.abort()
                    ray.wait(pending, num_returns=len(pending), timeout=10.0)
                    who = refs[r]
                    if isinstance(err, ray.exceptions.RayActorError):
                        self.lost.add(who)
                        raise HostLost(f"{self._who(who)}: {method} failed: the actor died (its process exited or "
                                       f"was killed)", who) from None
                    raise FabricError(f"{self._who(who)}: {method} failed: {_cause(err)}") from None
            now = time.monotonic()
            for user in self._drain_beats():
                seen[user] = now
            stalled = [refs[r] for r in pending if now - seen[refs[r]] > stall]
            if stalled:
                self.abort()
                raise FabricError(f"{method}: no answer and no heartbeat from {', '.join(map(self._who, stalled))} "
                                  f"for {stall:g} s")
        return results

    def _call_local(self, method: str, argv: dict) -> dict:
        """In-process hosts, one thread each (tests and debugging without Ray)."""
        with ThreadPoolExecutor(max_workers=len(argv)) as pool:
            futures = {h: pool.submit(getattr(self.hosts[h], method), *a) for h, a in argv.items()}
            out = {}
            for h, f in futures.items():
                try:
                    out[h] = f.result()
                except Exception as err:
                    self.abort()
                    raise FabricError(f"{self._who(h)}: {method} failed: {type(err).__name__}: {err}") from None
            return out

    def _who(self, h: str) -> str:
        nodes = sorted(self.by_host.get(h, ()))
        return f"node {nodes[0]}" if nodes == [h] else f"host {h} (nodes {', '.join(nodes)})"

    def _drain_beats(self) -> list:
        users = []
        while (msg := self.beats.recv(0)) is not None:
            try:
                decode_header(msg[1])
            except MessageError:
                continue
            users.append(msg[0])
        return users

    def abort(self) -> None:
        """Stop every phase up to the highest serial issued: a message from the coordinator on each host's socket
        (ZeroMQ; a host runs one call at a time), or delivered with the coordinator's token (Ray, in-process)."""
        self.failed = True  # an aborted host is not parked for another fabric
        header = encode_control(COORDINATOR, "abort", self.serial)
        for h, actor in self.hosts.items():
            if h not in self.abort_tokens:
                continue
            if self.local:
                actor.transport.deliver(self.abort_tokens[h], header, b"")
            elif self.transport == "zmq":
                try:
                    self.beats.send(h, header, b"")
                except (KeyError, TransportError):  # a host that cannot be reached has nothing left to stop
                    pass
            else:
                actor.deliver.remote(self.abort_tokens[h], header, b"")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.local:
                for host in self.hosts.values():
                    host.close()
            elif self.hosts:
                if not self._park():
                    self._end_hosts()
                for h in self.lost:
                    _remove_ipc_dir(self.addresses.get(h))
        finally:
            self.hosts = {}
            self.beats.close()
            if self.pg is not None:
                ray.util.remove_placement_group(self.pg)
                self.pg = None

    def _end_hosts(self) -> None:
        """Close every host, let it exit (kill one that does not answer), then remove the placement group."""
        refs = {a.close.remote(): a for h, a in self.hosts.items() if h not in self.lost}
        closed, stuck = ray.wait(list(refs), num_returns=len(refs), timeout=10)
        exits = [refs[r].__ray_terminate__.remote() for r in closed]  # sockets closed: the actor exits on its own,
        for r in stuck:                                                # after its queued calls
            ray.kill(refs[r])
        exits += [a.__ray_terminate__.remote() for a in self.spare if a is not None]
        if self.pg is not None:  # removing the group kills what is in it: let the actors exit first
            ray.wait(exits, num_returns=len(exits), timeout=5)

    def _park(self) -> bool:
        """Park the hosts for the next fabric of this driver (cluster/runtime/warm.py): after a clean end, or after
        the loss of hosts, whose bundles the next fabric fills with new ones (the others were aborted and are
        rebuilt from nothing). False (nothing parked) after any other failure, or when a host does not answer."""
        if self.warm_key is None or (self.failed and not self.lost):
            return False
        live = [a for h, a in self.hosts.items() if h not in self.lost]
        if not live:
            return False
        try:
            ray.get([a.park.remote() for a in live], timeout=10)
        except ray.exceptions.RayError:  # a timeout included
            return False
        WARM.put(self.warm_key, self.pg,
                 [None if h in self.lost else self.hosts[h] for h in self.bundle_order] + self.spare)
        self.pg = None  # the group lives on with its actors
        return True


def _new_host(h: str, specs: dict, protocol, hs, concurrency: int, options: dict):
    """A new host actor for host h's nodes, with its placement `options`."""
    return ray.remote(Host).options(max_concurrency=concurrency, max_restarts=0, **options).remote(h, specs, protocol, hs)


def _remove_ipc_dir(address) -> None:
    """A dead host's private ipc directory (fabric-XXXX/in under the temp dir), which it could not remove itself;
    nothing for tcp or another machine's path."""
    if not isinstance(address, str) or not address.startswith("ipc://"):
        return
    folder = os.path.dirname(address[len("ipc://"):])
    if os.path.basename(folder).startswith("fabric-") and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
