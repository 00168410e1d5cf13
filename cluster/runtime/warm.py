"""Warm host actors: the hosts of a fabric that has closed, kept with their placement group for the next fabric of
this driver with the same bundle, strategy and concurrency.

Starting a host actor costs a process and its imports (torch alone takes about 2 s of CPU), and that cost dominated
every short run on a fabric: a sweep or a comparison builds one fabric per point, a recovered run one per fault.
So a fabric that closes parks its hosts: each closes its sockets and drops its nodes (`Host.park`), leaving a process
that holds nothing of the old fabric but its imports. The next fabric rebuilds them (`Host.rebuild`: the constructor
run again, with new nodes, new sockets and new credentials) instead of starting new processes, and its hosts keep
the bundles, and so the machines, the parked group had.

- A fabric parks after a clean end, or after losing hosts: the survivors (aborted mid-phase, rebuilt from nothing
  all the same) are parked, and the next fabric starts new actors in the lost ones' bundles only, so a recovered
  run pays one start per lost host. After any other failure (a phase error, an abort, a host that does not answer
  `park`) its hosts end with it.
- A group of n parked actors serves a fabric of n/2 to n hosts: the fabric takes the first bundles and the rest
  wait with it (on one machine that is what a group of its own size gives; on a cluster the first bundles of a
  packed or spread group are packed or spread alike).
- Only groups whose bundles reserve no more than the minimal CPU share are kept: they hold nothing a later fabric
  could be refused. At most MAX_WARM actors wait (the oldest group is ended first), and a group never outlives its
  Ray instance. `fabric.reuse_hosts = false` starts every fabric's hosts afresh and ends them with it (the
  benchmarks' cold starts do so).
"""
from __future__ import annotations

import ray

from cluster.runtime.placement import MIN_CPUS, bundle

MAX_WARM = 16


def warm_key(settings, concurrency: int):
    """What a parked group must share with a fabric to serve it (besides its size), or None when this fabric's
    hosts are not to be kept."""
    if not settings.reuse_hosts or bundle(settings) != {"CPU": MIN_CPUS}:
        return None
    return settings.placement, concurrency


class WarmHosts:
    """The parked groups of this driver, oldest first: [(key, placement group, actors in bundle order)]."""

    def __init__(self):
        self.parked, self.instance = [], None

    def _same_instance(self) -> None:
        """Forget groups of an earlier Ray instance (their actors ended with it)."""
        ctx = ray.get_runtime_context()
        instance = (ctx.get_node_id(), ctx.get_job_id())
        if instance != self.instance:
            self.parked, self.instance = [], instance

    def take(self, key, n: int):
        """(placement group, actors) of a parked group with `key` and n to 2n actors (the fabric's hosts take the
        first n bundles, the rest wait with them): the smallest such group, the newest of equals; or None."""
        self._same_instance()
        fits = [k for k, (kk, _, a) in enumerate(self.parked) if kk == key and n <= len(a) <= 2 * n]
        if not fits:
            return None
        best = min(fits, key=lambda k: (len(self.parked[k][2]), -k))
        _, pg, actors = self.parked.pop(best)
        return pg, actors

    def put(self, key, pg, actors: list) -> None:
        self._same_instance()
        self.parked.append((key, pg, list(actors)))
        while len(self) > MAX_WARM:
            _, old_pg, old = self.parked.pop(0)
            end_group(old_pg, old)

    def __len__(self) -> int:
        """The parked actors (a bundle whose actor was lost holds none)."""
        return sum(a is not None for _, _, group in self.parked for a in group)

    def release(self) -> None:
        """End every parked group: its actors exit and its placement group is removed."""
        if ray.is_initialized():
            self._same_instance()
            while self.parked:
                _, pg, actors = self.parked.pop()
                end_group(pg, actors)
        self.parked = []


def end_group(pg, actors) -> None:
    """Let the actors exit, then remove their placement group (removing it first would kill them mid-exit)."""
    exits = [a.__ray_terminate__.remote() for a in actors if a is not None]
    ray.wait(exits, num_returns=len(exits), timeout=5)
    if pg is not None:
        ray.util.remove_placement_group(pg)


WARM = WarmHosts()
