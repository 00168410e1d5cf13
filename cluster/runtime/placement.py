"""Where the host actors run: one Ray placement group per fabric, one bundle per host actor.

`fabric.placement` picks the group's strategy: `pack` (fill a machine before the next: neighbours share machines
where they fit) or `spread` (one host per machine in turn). Hosts get their bundles in breadth-first order over the
links between them, so graph neighbours hold consecutive bundles, which PACK puts on one machine while it has room.

A bundle holds `fabric.actor_cpus` CPUs and the `fabric.resources` of one host. Ray refuses a bundle without
resources, so a host that reserves no CPU (actor_cpus = 0, the default on one machine) asks for MIN_CPUS: a thousand
such hosts reserve one CPU. The group is removed when the fabric closes.
"""
from __future__ import annotations

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.nodeset import PhaseError
from cluster.runtime.settings import FabricSettings

MIN_CPUS = 0.001
STRATEGIES = {"pack": "PACK", "spread": "SPREAD"}


class PlacementError(PhaseError):
    """The cluster cannot hold the fabric's host actors; the message names the fabric.* key to change."""


def host_order(hosts: list, links) -> list:
    """`hosts` in breadth-first order over `links` {(a, b)} (taken both ways), from the first host (the input's);
    a host with no link to those before it starts a new search, in the order given."""
    adj = {h: set() for h in hosts}
    for a, b in links:
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    rank = {h: k for k, h in enumerate(hosts)}
    order, seen = [], set()
    for root in hosts:
        if root in seen:
            continue
        seen.add(root)
        queue = [root]
        while queue:
            h = queue.pop(0)
            order.append(h)
            for n in sorted(adj[h] - seen, key=rank.get):
                seen.add(n)
                queue.append(n)
    return order


def bundle(settings) -> dict:
    """The resources of one host actor: its CPUs (at least MIN_CPUS) and fabric.resources."""
    settings = FabricSettings.of(settings)
    return {"CPU": max(float(settings.actor_cpus or 0.0), MIN_CPUS), **(settings.resources or {})}


def place_hosts(order: list, settings, wait_s: float = 120.0):
    """Reserve one bundle per host (in `order`) and wait until Ray has placed the group; returns (group, {host:
    actor options}) with each actor asking for exactly its bundle. Raises PlacementError, naming the key, when the
    cluster's totals cannot hold the group, or when it is not placed within `wait_s`."""
    one = bundle(settings)
    strategy = FabricSettings.of(settings).placement
    if strategy not in STRATEGIES:
        raise PlacementError(f"fabric.placement: expected one of {list(STRATEGIES)}, got {strategy!r}")
    total = ray.cluster_resources()
    for name, amount in one.items():
        need = amount * len(order)
        if need > total.get(name, 0.0) + 1e-9:
            key = "fabric.actor_cpus" if name == "CPU" else "fabric.resources"
            raise PlacementError(f"{key}: {len(order)} host actors need {need:g} {name}, the Ray cluster has "
                                 f"{total.get(name, 0.0):g}")
    pg = placement_group([dict(one) for _ in order], strategy=STRATEGIES[strategy])
    try:
        ray.get(pg.ready(), timeout=wait_s)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(pg)
        raise PlacementError(f"fabric.placement: {len(order)} bundles of {one} ({strategy}) not placed within "
                             f"{wait_s:g} s (resources held by other jobs?)") from None
    return pg, {h: bundle_options(pg, k, one) for k, h in enumerate(order)}


def bundle_options(pg, k: int, one: dict) -> dict:
    """The actor options that put a host in bundle k of `pg`, asking for exactly its bundle `one`."""
    opts = dict(num_cpus=one["CPU"], scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=k))
    if len(one) > 1:
        opts["resources"] = {n: v for n, v in one.items() if n != "CPU"}
    return opts
