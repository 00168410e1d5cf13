"""One declaration, everything derived: partitions, what each node holds, its ports and the legal edges
(nodes/graph.py), for symmetric layered nets, asymmetric ones (W{n}, B{n}) and a masked directed graph."""
import pytest
import torch

from nodes.graph import assemble, slice_params
from nodes.layered import directed_graph, layered, layered_asym


def edges(model, granularity="layer", split=1):
    return model.legal_edges(model.partition(granularity, split))


def test_symmetric_layers_hold_rows_and_replica_columns_and_talk_both_ways():
    m = layered("energy", (4, 5, 3, 2), "sigmoid", 0.5)
    specs = m.node_specs(m.partition("layer"))
    assert list(specs) == ["L1", "L2", "L3"]
    l2 = specs["L2"]
    assert {k: (h.param, h.role) for k, h in l2.held.items()} == {
        "W1": ("W1", "primary"), "b1": ("b1", "primary"), "W2": ("W2", "replica")}
    assert [(t.kind, t.weight, t.slot) for t in l2.terms] == [("fwd", "W1", "L1.a"), ("bias", "b1", None),
                                                             ("bwd", "W2", "L3.a")]
    assert specs["L1"].boundary == ("x",) and specs["L3"].boundary == ("y",) and specs["L2"].boundary == ()
    assert edges(m) == {("L1", "L2"), ("L2", "L1"), ("L2", "L3"), ("L3", "L2")}


@pytest.mark.parametrize("granularity,split", [("layer", 2), ("neuron", 1)])
def test_any_partition_slices_every_parameter_exactly_once_per_role(granularity, split):
    m = layered("prototypical", (4, 5, 3), "sigmoid4")
    specs = m.node_specs(m.partition(granularity, split))
    params = m.init_params(3)
    held = {i: slice_params(s, params) for i, s in specs.items()}
    back = assemble(m, specs, held)
    assert all(torch.equal(back[k], params[k]) for k in params)
    replica = assemble(m, specs, held, "replica")
    assert torch.equal(replica["W1"], params["W1"]) and not replica["W0"].any()  # W0's input end is not a node
    n1, n2 = m.partition(granularity, split)[0], m.partition(granularity, split)[-1]
    assert (n1.node_id, n2.node_id) in m.legal_edges(m.partition(granularity, split))
    ports = {(p.src, p.dst) for s in specs.values() for p in s.out_ports}
    assert ports == m.legal_edges(m.partition(granularity, split))  # out-ports mirror in-ports


def test_asymmetric_layers_own_forward_and_feedback_weights_with_no_replicas():
    m = layered_asym((4, 5, 3, 2), "sigmoid")
    specs = m.node_specs(m.partition("layer"))
    owners = {h.param: i for i, s in specs.items() for h in s.held.values()}
    assert owners == {"W0": "L1", "b0": "L1", "B1": "L1", "W1": "L2", "b1": "L2", "B2": "L2", "W2": "L3",
                      "b2": "L3"}
    assert all(h.role == "primary" for s in specs.values() for h in s.held.values())
    assert m.param_shapes()["B1"] == (5, 3) and m.param_shapes()["W1"] == (3, 5)
    assert edges(m) == {("L1", "L2"), ("L2", "L1"), ("L2", "L3"), ("L3", "L2")}
    ff = layered_asym((4, 5, 3, 2), "sigmoid", feedback=False)
    assert edges(ff) == {("L1", "L2"), ("L2", "L3")}  # feed-forward: messages flow one way only


def test_a_masked_directed_graph_has_ports_only_where_the_mask_has_weights():
    # 4 units, the last one the output; 0 -> 1 -> 2 -> 3 and 3 -> 0 (a ring), plus 1 -> 1 (a self-loop)
    mask = [[0, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]  # mask[i][j]: j drives i
    m = directed_graph(4, 2, 1, mask=mask)
    blocks = m.partition("neuron")
    assert [b.node_id for b in blocks] == ["S.0", "S.1", "S.2", "Y"]
    assert m.legal_edges(blocks) == {("S.0", "S.1"), ("S.1", "S.2"), ("S.2", "Y"), ("Y", "S.0")}
    specs = m.node_specs(blocks)
    assert [p.src for p in specs["S.1"].in_ports] == ["S.0"]
    assert any(part[0] == "self" for part in specs["S.1"].slots["S.a"].parts)  # its self-loop reads itself
    p = m.init_params(0)
    assert torch.equal(p["W_SS"] == 0, torch.tensor(mask)[:3, :3] == 0)  # structural zeros stay zero
    dense = directed_graph(4, 2, 1)
    assert len(dense.legal_edges(dense.partition("neuron"))) == 4 * 3  # no mask: every ordered pair


def test_bad_declarations_are_named():
    with pytest.raises(ValueError, match="sizes"):
        layered("energy", (4,), "tanh")
    with pytest.raises(ValueError, match="model"):
        layered("hopfield", (4, 3), "tanh")
    with pytest.raises(ValueError, match="activation"):
        layered("energy", (4, 3), "relu")
    with pytest.raises(ValueError, match="granularity"):
        layered("energy", (4, 3), "tanh").partition("column")


def test_a_masked_directed_graph_relaxes_alike_in_process_and_on_a_neuron_fabric():
    """The ring of test_a_masked_directed_graph_has_ports_only_where_the_mask_has_weights, run: a node's inbox
    leaves zeros where the mask has no neighbour, on both runners (the fabric's hosts as threads here)."""
    from cluster.runtime.coordinator import FabricEngine
    from cluster.inprocess import ReferenceEngine
    from protocols.base import Phase
    mask = [[0, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    m = directed_graph(4, 2, 1, mask=mask, dt=0.2)
    params = m.init_params(1, scale=2.0)
    x = torch.rand(3, 2, dtype=torch.float64)
    ref = ReferenceEngine(m, "ep", torch.float64)
    fab = FabricEngine(m, "ep", dict(granularity="neuron", lr=[0.1], dtype="float64", timeout_s=10), local=True)
    try:
        out = []
        for e in (ref, fab):
            e.set_params(params)
            e.set_batch(x)
            out.append(e.run_phase(Phase("free", 30), record_states=True)["states"])
        for a, b in zip(*out, strict=True):
            assert a.abs().max() > 0.05 and torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    finally:
        fab.close()
