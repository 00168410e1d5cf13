"""What a Simulator would build, before it builds it (`Simulator.summary()`): the logical nodes of the partition,
the hosts they are placed on, their ports and edges, and which node owns (and which replicates) each parameter.
Computed from the model's declaration (nodes/graph.Model.node_specs) and the fabric's placement
(cluster/runtime/fabric.place); no actor starts."""
from __future__ import annotations

from dataclasses import dataclass


def _span(r) -> str:
    return ":" if r is None else f"{r[0]}:{r[1]}"


def _part(param: str, rows, cols, shapes: dict) -> str:
    """W[rows,cols] (b[rows] for a vector) of a held share."""
    return f"{param}[{_span(rows)}" + (f",{_span(cols)}]" if len(shapes[param]) > 1 else "]")


@dataclass(frozen=True)
class Summary:
    """`nodes`: [{id, group, units (lo, hi), host, holds {local: (param, rows, cols, role)}, boundary}], `hosts`
    {host: [node ids]}, `ports` [(sender, receiver, kind, width)], `edges` [(sender, receiver)], `params` {name:
    {shape, owners [(node, rows, cols)], replicas [(node, rows, cols)]}}; `str()` prints them as tables."""

    title: str
    nodes: tuple
    hosts: dict
    ports: tuple
    edges: tuple
    params: dict

    def __str__(self) -> str:
        def table(rows):
            widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
            return ["  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]

        shapes = {k: v["shape"] for k, v in self.params.items()}
        lines = [self.title, f"nodes ({len(self.nodes)})"]
        lines += table([("node", "group", "units", "host", "holds", "boundary")]
                       + [(n["id"], n["group"], f"{n['units'][0]}:{n['units'][1]}", n["host"],
                           " ".join(_part(p, r, c, shapes) + ("'" if role == "replica" else "")
                                    for p, r, c, role in n["holds"].values()) or "-",
                           ",".join(n["boundary"]) or "-") for n in self.nodes])
        lines.append(f"hosts ({len(self.hosts)})")
        lines += [f"  {h}: {', '.join(ns)}" for h, ns in self.hosts.items()]
        lines.append(f"ports ({len(self.ports)}, on {len(self.edges)} edges)")
        lines += table([("sender", "receiver", "kind", "width")] + list(self.ports)) if self.ports else ["  -"]
        lines.append(f"parameters ({len(self.params)}; ' marks a replica's copy)")
        lines += table([("param", "shape", "owner", "replicas")]
                       + [(k, "x".join(map(str, v["shape"])),
                           ", ".join(i + _part(k, r, c, shapes)[len(k):] for i, r, c in v["owners"]),
                           ", ".join(i + _part(k, r, c, shapes)[len(k):] for i, r, c in v["replicas"]) or "-")
                          for k, v in self.params.items()])
        return "\n".join(lines)


def summarize(cfg, model, protocol, specs=None) -> Summary:
    """The Summary of cfg's engine on `model` under `protocol` (an object; its ports add message kinds); `specs`:
    its logical nodes where already built (cluster/launch.node_specs)."""
    from cluster.launch import fabric_settings, node_specs
    specs = specs if specs is not None else node_specs(cfg, model, protocol)
    if cfg.engine == "reference":
        placement = {i: "in-process" for i in specs}
        how = "in-process engine (layer partition)"
    else:
        from cluster.runtime.fabric import exchange_of, place
        settings = fabric_settings(cfg)
        placement = place(list(specs), int(settings.hosts))
        how = (f"fabric ({cfg.granularity} partition, split {settings.split}, fabric.hosts {settings.hosts}; "
               f"transport {settings.transport}, wire {settings.wire}, exchange {exchange_of(settings)})")
    hosts = {}
    for i, h in placement.items():
        hosts.setdefault(h, []).append(i)
    nodes = tuple({"id": i, "group": s.block.group, "units": (s.block.lo, s.block.hi), "host": placement[i],
                   "holds": {k: (h.param, h.rows, h.cols, h.role) for k, h in s.held.items()},
                   "boundary": tuple(s.boundary)} for i, s in specs.items())
    ports = tuple(sorted((p.src, p.dst, p.kind, p.width) for s in specs.values() for p in s.in_ports))
    params = {k: {"shape": tuple(v), "owners": [], "replicas": []} for k, v in model.param_shapes().items()}
    for i, s in specs.items():
        for h in s.held.values():
            params[h.param]["owners" if h.role == "primary" else "replicas"].append((i, h.rows, h.cols))
    title = (f"model {model.name} (physics {model.physics}), protocol {protocol.name}, {cfg.dtype}: {len(specs)} "
             f"node{'s' * (len(specs) != 1)} on {len(hosts)} host{'s' * (len(hosts) != 1)}, {how}")
    return Summary(title, nodes, hosts, ports, tuple(sorted({(p[0], p[1]) for p in ports})), params)
