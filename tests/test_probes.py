"""The Python API's probes, step-by-step runs, partition summary and results folders (experiments/api.py,
experiments/probes.py, experiments/summary.py): probes by name, equal on both engines; sampling every k steps;
a run continued equals one run of the summed length; the summary names every node, host, port and owner; out=None
writes nothing."""
import os

import pytest
import torch

from experiments.api import Phase, Probe, Simulator
from nodes.layered import layered
from tests.conftest import batch

NET = layered("prototypical", [4, 3, 2], "sigmoid4")
KEYS = dict(dtype="float64", timeout_s=30.0)


def sim_of(engine="reference", **kw):
    return Simulator(NET, "ep-symmetric", engine=engine, **KEYS, **kw)


def no_engine(monkeypatch):
    """Starting an engine from here on fails the test."""
    import cluster.launch

    def refuse(*a, **k):
        raise AssertionError("an engine was started")
    monkeypatch.setattr(cluster.launch, "make_engine", refuse)


PROBES = [Probe("L1"), Probe("L2", every=4), Probe(edge=("L2", "L1")), Probe(accumulators="L1", name="acc")]
PROGRAM = [7, Phase("plus", 6, 0.5, "carry", coef=2.0), 5]  # free, nudged (accumulating), free again


def record(engine: str) -> list:
    """The probes' data of PROGRAM, one run per entry, on one engine."""
    x, y = batch(NET)
    with sim_of(engine, probes=PROBES) as sim:
        sim.set_batch(x, y)
        return [sim.run(p) for p in PROGRAM]


def test_probes_are_returned_by_name_with_their_shapes_and_steps():
    runs = record("reference")
    first, nudged, last = runs
    assert list(first) == ["L1", "L2", "L2->L1", "acc"]
    assert first["L1"].shape == (7, 6, 3) and first.steps["L1"] == list(range(1, 8))
    assert first["L2"].shape == (1, 6, 2) and first.steps["L2"] == [4]
    assert nudged.steps["L2"] == [8, 12] and last.steps["L2"] == [16]
    assert first["L2->L1"].shape == (7, 6, 2)   # what L2 sends: the signal of its 2 units
    assert first["acc"] == {} and first.steps["acc"] == [7]  # nothing accumulated in a free phase
    assert set(nudged["acc"]) == {"acc.W0", "acc.b0", "acc.W1"} and nudged["acc"]["acc.W0"].shape == (3, 4)
    assert last.steps["L1"] == list(range(14, 19))
    for a, b in zip(nudged["acc"].values(), last["acc"].values()):
        assert torch.equal(a, b)  # a free phase adds nothing; the batch keeps its accumulators


def test_sampling_every_k_takes_the_steps_that_are_multiples_of_k():
    x, y = batch(NET)
    with sim_of(probes=[Probe("L1"), Probe("L1", every=3, name="every3")]) as sim:
        sim.set_batch(x, y)
        runs = [sim.run(n) for n in (5, 8, 1)]   # steps 1..5, 6..13, 14
    assert [r.steps["every3"] for r in runs] == [[3], [6, 9, 12], []]
    for r in runs:
        assert r["every3"].shape[0] == len(r.steps["every3"])
        for k, t in enumerate(r.steps["every3"]):
            assert torch.equal(r["every3"][k], r["L1"][r.steps["L1"].index(t)])


def test_a_run_continued_equals_one_run_of_the_summed_length():
    x, y = batch(NET, seed=2)
    probes = [Probe("L1"), Probe("L2"), Probe(edge=("L1", "L2"))]
    with sim_of(probes=probes) as one, sim_of(probes=probes) as two:
        whole = one.run(30, x=x, y=y)
        parts = [two.run(10, x=x, y=y), two.run(Phase("free", 20))]
        assert one.n_steps == two.n_steps == 30
        for name in whole:
            assert whole.steps[name] == parts[0].steps[name] + parts[1].steps[name] == list(range(1, 31))
            assert torch.equal(whole[name], torch.cat([p[name] for p in parts]))  # the same arithmetic: exact
        # reset: from zero again, at step 0; a phase may start from a saved phase of this batch
        two.reset()
        again = two.run(10)
        assert again.steps["L1"] == list(range(1, 11)) and torch.equal(again["L1"], parts[0]["L1"])
        nudged = two.run(Phase("plus", 3, 0.5, "free"))   # from the saved state of the phase "free" (step 10)
        assert nudged.steps["L1"] == [11, 12, 13]


def test_the_input_group_an_unknown_name_and_bad_runs_are_refused_by_field_before_anything_starts(monkeypatch):
    no_engine(monkeypatch)
    with pytest.raises(ValueError, match=r"group: model prototypical has no group 's1'; .*: L1, L2"):
        sim_of(probes=[Probe("s1")])
    with pytest.raises(ValueError, match=r"group: 'L0' is the clamped input"):
        sim_of(probes=[Probe("L0")])
    with pytest.raises(ValueError, match=r"edge: \('L1', 'L3'\) .* the edges: \(L1, L2\), \(L2, L1\)"):
        sim_of(probes=[Probe(edge=("L1", "L3"))])
    with pytest.raises(ValueError, match=r"edge: .*L1\.0.*"):  # a fabric's node ids: the neuron partition's
        sim_of("fabric", granularity="neuron", probes=[Probe(edge=("L1", "L2"))])
    with pytest.raises(ValueError, match="accumulators: no node 'L9'; the nodes: L1, L2"):
        sim_of(probes=[Probe(accumulators="L9")])
    with pytest.raises(ValueError, match="every: must be an integer >= 1"):
        sim_of(probes=[Probe("L1", every=0)])
    with pytest.raises(ValueError, match="name: two probes named 'L1'"):
        sim_of(probes=[Probe("L1"), Probe("L1", every=2)])
    sim = sim_of()
    with pytest.raises(ValueError, match="group: model prototypical has no group 'h1'"):
        sim.run(5, probes=[Probe("h1")])
    with pytest.raises(ValueError, match="x: no batch to run on"):
        sim.run(5)
    with pytest.raises(ValueError, match="steps: a run takes at least one step"):
        sim.run(0)


def test_a_phase_starting_from_a_phase_not_run_is_refused():
    x, y = batch(NET)
    with sim_of() as sim:
        with pytest.raises(ValueError, match=r"start: no saved state 'free'; .*: none"):
            sim.run(Phase("plus", 3, 0.5, "free"), x=x, y=y)


def test_the_summary_lists_every_node_host_port_and_owner_without_starting_anything(monkeypatch):
    from cluster.runtime.fabric import place
    no_engine(monkeypatch)
    sim = sim_of("fabric", granularity="neuron", hosts=2)
    s = sim.summary()
    text = str(s)
    specs = NET.node_specs(NET.partition("neuron"))
    assert [n["id"] for n in s.nodes] == list(specs) and len(specs) == 5
    assert {n["id"]: n["host"] for n in s.nodes} == place(list(specs), 2)
    assert s.hosts == {"H0": ["L1.0", "L1.2", "L2.1"], "H1": ["L1.1", "L2.0"]}
    assert set(s.edges) == NET.legal_edges(NET.partition("neuron")) and len(s.ports) == 12
    for i, spec in specs.items():
        assert f"\n  {i} " in text
        for h in spec.held.values():
            assert (i, h.rows, h.cols) in s.params[h.param]["owners" if h.role == "primary" else "replicas"]
    assert s.params["W1"]["owners"] == [("L2.0", (0, 1), None), ("L2.1", (1, 2), None)]
    assert s.params["W1"]["replicas"] == [("L1.0", None, (0, 1)), ("L1.1", None, (1, 2)), ("L1.2", None, (2, 3))]
    rows = [" ".join(line.split()) for line in text.splitlines()]
    assert "W1 2x3 L2.0[0:1,:], L2.1[1:2,:] L1.0[:,0:1], L1.1[:,1:2], L1.2[:,2:3]" in rows
    assert "5 nodes on 2 hosts" in text
    inproc = str(sim_of().summary())
    assert "2 nodes on 1 host, in-process engine" in inproc and "L1 L2 a 3" in [" ".join(r.split()) for r in
                                                                                  inproc.splitlines()]


def _files(root) -> set:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs + ["."]}


def _scratch() -> set:
    import tempfile
    return {f for f in os.listdir(tempfile.gettempdir()) if f.startswith("ep-fabric-")}


@pytest.mark.slow
def test_out_none_writes_nothing_and_an_explicit_out_writes_there(tmp_path, monkeypatch):
    from experiments.config import ConfigError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    sim = sim_of(dataset="random", batch=4, T1=20, T2=5, epochs=1)
    before, scratch = _files(tmp_path), _scratch()
    report = sim.audit()
    metrics = sim.train(out=None)
    assert "per_tensor" in report and metrics["test_accuracy"] is not None and "final_params" in metrics
    assert _files(tmp_path) == before and _scratch() <= scratch  # nothing in cwd, results/ or a temporary folder
    with pytest.raises(ConfigError, match="out: resume continues the run in a results folder"):
        sim.train(resume=True)
    sim.train(out="results/x")
    assert {"config.yaml", "metrics.json", "checkpoint.npz"} <= set(os.listdir(tmp_path / "results/x"))


@pytest.mark.slow
def test_probes_and_continued_runs_on_the_fabric_equal_the_in_process_engine(ray_session):
    """The layer partition on host actors runs each node's arithmetic as the in-process engine does, and the
    states travel as float64 bytes: the probes' data is equal, bit for bit. The message log counts the edge's
    messages: steps + 1 per run (a(s_0) .. a(s_T))."""
    x, y = batch(NET)
    ref = record("reference")
    with sim_of("fabric", probes=PROBES) as sim:
        sim.set_batch(x, y)
        fab = [sim.run(p) for p in PROGRAM]
        sim._eng.message_logs(clear=True)
        edge = sim.run(9, probes=[Probe(edge=("L1", "L2"), name="edge")])
        counters = sim._eng.message_logs()["nodes"]["L2"]["counters"]
    assert edge["edge"].shape == (9, 6, 3)
    assert [c[4] for c in counters if c[:3] == ["L1", "L2", "a"]] == [10]
    for a, b in zip(ref, fab, strict=True):
        assert list(a) == list(b) and a.steps == b.steps
        for name in a:
            if isinstance(a[name], dict):
                assert a[name].keys() == b[name].keys() and all(torch.equal(a[name][k], b[name][k]) for k in a[name])
            else:
                assert torch.equal(a[name], b[name]), name
