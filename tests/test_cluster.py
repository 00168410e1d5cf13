"""Running on a cluster: ray_config.yaml passes Ray's launcher schema and its fabric section reaches the run config;
a cluster address resolves a loopback data plane; host actors sit in a placement group (neighbours in consecutive
bundles, removed on close); a fabric spread over two Ray nodes trains exactly as the in-process engine does; a
local Ray listens on loopback only."""
import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from cluster.runtime.placement import PlacementError, bundle, host_order
from cluster.runtime.transport import resolve_wire
from experiments.config import RAY_CONFIG, ConfigError, cluster_fabric, load_config
from tests.conftest import ROOT, run_cli


def launcher():
    with open(RAY_CONFIG) as f:
        return yaml.safe_load(f)


def test_launcher_part_passes_rays_schema():
    """What `ray up` checks: the file against ray-schema.json, and again once Ray filled in its local defaults."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    raw = launcher()
    jsonschema.validate(raw, schema)
    validate_config(prepare_config(copy.deepcopy(raw)))
    assert raw["provider"]["type"] == "local" and "head_ip" in raw["provider"] and "worker_ips" in raw["provider"]
    assert any("pip install" in c and "ep-fabric" in c for c in raw["setup_commands"])
    with pytest.raises(jsonschema.ValidationError, match="fabric"):  # why the section lives under metadata
        jsonschema.validate(dict(raw, fabric={}), schema)


def test_fabric_section_reaches_the_run_config_of_a_cluster_run_only(monkeypatch):
    monkeypatch.delenv("EP_RAY_CONFIG", raising=False)
    section = launcher()["metadata"]["fabric"]
    assert cluster_fabric() == section
    cfg = load_config("train", ["address=auto"])
    for k, v in section.items():
        assert getattr(cfg.fabric, k) == v, k
    assert load_config("train", ["address=auto", "fabric.placement=spread"]).fabric.placement == "spread"  # --set wins
    local = load_config("train")
    assert (local.fabric.placement, local.fabric.host, local.fabric.actor_cpus, local.fabric.ports) == (
        "pack", "127.0.0.1", 0.0, None)


def test_a_bad_fabric_section_names_the_file_and_key(tmp_path, monkeypatch):
    path = tmp_path / "ray_config.yaml"
    path.write_text("cluster_name: x\nprovider: {type: local}\nmetadata: {fabric: {placemnt: pack}}\n")
    monkeypatch.setenv("EP_RAY_CONFIG", str(path))
    with pytest.raises(ConfigError, match="ray_config.yaml: metadata.fabric.placemnt: unknown key"):
        load_config("train", ["address=auto"])
    load_config("train")  # no address: the file is not read


def test_cluster_address_with_loopback_host_resolves_to_tcp(tmp_path, monkeypatch):
    monkeypatch.setenv("EP_RAY_CONFIG", str(tmp_path / "absent.yaml"))
    cfg = load_config("train", ["address=auto"])
    assert cfg.fabric.host == "0.0.0.0" and resolve_wire(cfg.fabric.wire, cfg.fabric.host) == "tcp"
    assert load_config("train", ["address=10.0.0.1:6379", "fabric.wire=tcp"]).fabric.host == "127.0.0.1"  # one machine
    with pytest.raises(ConfigError, match="fabric.wire: .*ipc reaches one machine"):
        load_config("train", ["address=auto", "fabric.wire=ipc"])
    assert load_config("train", ["address=auto", "engine=reference"]).fabric.host == "127.0.0.1"


@pytest.mark.parametrize("setting,field", [
    ("fabric.placement=nearby", "fabric.placement"), ("fabric.ports=[10,20]", "fabric.ports"),
    ("fabric.ports=[60000,50000]", "fabric.ports"), ("fabric.ports=[50000]", "fabric.ports"),
    ("fabric.ports=5", "fabric.ports"), ("fabric.resources={CPU: 1}", "fabric.resources"),
    ("fabric.resources={slot: 0}", "fabric.resources")])
def test_invalid_fabric_keys_name_the_field(setting, field):
    with pytest.raises(ConfigError) as err:
        load_config("train", [setting])
    assert err.value.field == field


def test_invalid_placement_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    r = run_cli("train", "--set", "fabric.placement=nearby", "--out", str(out), timeout=60)
    assert r.returncode == 2 and "fabric.placement" in r.stderr and not out.exists()


def test_host_order_puts_graph_neighbours_next_to_each_other():
    chain = {("L3", "L2"), ("L1", "L2"), ("L2", "L3"), ("L2", "L1")}
    assert host_order(["L1", "L3", "L2"], chain) == ["L1", "L2", "L3"]
    assert host_order(["a", "b", "c", "d"], {("a", "c"), ("b", "d")}) == ["a", "c", "b", "d"]
    assert host_order(["x"], set()) == ["x"]
    assert bundle({"actor_cpus": 0.0}) == {"CPU": 0.001}
    assert bundle({"actor_cpus": 2, "resources": {"slot": 1}}) == {"CPU": 2.0, "slot": 1}


@pytest.mark.slow
def test_host_actors_sit_in_a_placement_group_removed_on_close(ray_session):
    from ray.util import placement_group_table

    from cluster.runtime.coordinator import FabricEngine
    from tests.test_fabric import MODEL, settings
    for placement in ("pack", "spread"):
        eng = FabricEngine(MODEL, "ep-symmetric", settings(granularity="neuron", hosts=2, placement=placement,
                                                           reuse_hosts=False))
        pg = eng.fabric.pg
        try:
            table = placement_group_table(pg)
            assert table["strategy"] == placement.upper() and table["state"] == "CREATED"
            assert [b for b in table["bundles"].values()] == [{"CPU": 0.001}] * 2
            held = ray_session.get([a.__ray_call__.remote(
                lambda self: ray_session.get_runtime_context().get_placement_group_id())
                for a in eng.fabric.hosts.values()])
            assert set(held) == {pg.id.hex()}
        finally:
            eng.close()
        assert placement_group_table(pg)["state"] == "REMOVED"


def _warm_run(**where):
    """(estimate, host pids, placement group id, whether the hosts were parked ones) of one ep-symmetric program on
    test_fabric's MODEL; the engine is closed afterwards."""
    import os

    from cluster.runtime.coordinator import FabricEngine
    from protocols import get_protocol
    from tests.conftest import batch, scaled_params
    from tests.test_fabric import MODEL, settings
    import ray
    eng = FabricEngine(MODEL, "ep-symmetric", settings(**where))
    try:
        pids = sorted(ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in eng.fabric.hosts.values()],
                              timeout=30))
        eng.set_params(scaled_params(MODEL))
        eng.set_batch(*batch(MODEL, seed=2))
        eng.run_program(get_protocol("ep-symmetric").program(0.1, 30, 10))
        return eng.estimate(), pids, eng.fabric.pg, eng.fabric.warm
    finally:
        eng.close()


@pytest.fixture()
def own_pool(monkeypatch, ray_session):
    """A pool of parked hosts of the test's own (the session's other fabrics keep theirs), released at the end."""
    from cluster.runtime import fabric
    from cluster.runtime.warm import WarmHosts
    pool = WarmHosts()
    monkeypatch.setattr(fabric, "WARM", pool)
    yield pool
    pool.release()


@pytest.mark.slow
def test_a_cleanly_closed_fabric_parks_its_hosts_for_the_next_fabric_of_its_shape(own_pool, ray_session):
    """cluster/runtime/warm.py: the next fabric of the same shape runs on the parked processes and placement group
    and computes what a cold fabric computes, bit for bit; reuse_hosts=false starts and ends its own; a group serves
    a fabric of half its size; `release` ends the parked ones and removes their group."""
    import torch
    from ray.util import placement_group_table

    from tests.conftest import rel
    cold, pids, pg, warm = _warm_run(granularity="neuron", hosts=2)
    assert not warm and len(own_pool) == 2 and placement_group_table(pg)["state"] == "CREATED"
    again, pids2, pg2, warm2 = _warm_run(granularity="neuron", hosts=2)
    assert warm2 and pids2 == pids and pg2.id == pg.id
    fresh, pids3, pg3, warm3 = _warm_run(granularity="neuron", hosts=2, reuse_hosts=False)
    assert not warm3 and not set(pids3) & set(pids) and pg3.id != pg.id and len(own_pool) == 2
    assert placement_group_table(pg3)["state"] == "REMOVED"
    for k in cold:
        assert torch.equal(again[k], cold[k]) and torch.equal(fresh[k], cold[k]), k
    one, pids4, _, warm4 = _warm_run(granularity="neuron", hosts=1)  # the first of the two; the second waits
    assert warm4 and set(pids4) < set(pids) and len(own_pool) == 2
    for k in cold:
        assert rel(one[k], cold[k]) <= 1e-12, k  # another partition: the same values to rounding
    own_pool.release()
    assert len(own_pool) == 0 and placement_group_table(pg)["state"] == "REMOVED"


def _kill(actor) -> None:
    """ray.kill, then wait until the actor is gone (a kill lands asynchronously: a call sent after it may still run)."""
    import time

    import ray
    ray.kill(actor)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_call__.remote(lambda self: 0), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers after 30 s")


@pytest.mark.slow
def test_a_failed_fabric_parks_nothing_and_lost_or_dead_parked_hosts_are_replaced(own_pool, ray_session):
    """A phase error ends the hosts with their fabric; a parked host that dies ends its group; a lost host's
    survivors are parked and the next fabric starts a new actor in the lost one's bundle, computing as a cold one."""
    import os

    import torch

    from cluster.runtime.coordinator import FabricEngine
    from cluster.runtime.fabric import HostLost
    from protocols import get_protocol
    from tests.conftest import batch, scaled_params
    from tests.test_fabric import MODEL, settings
    from cluster.nodeset import PhaseError
    from nodes.layered import layered
    from protocols.base import Phase
    _warm_run(granularity="neuron", hosts=2)
    unstable = layered("energy", (4, 6, 3), "sigmoid", dt=2.5)  # its two layers on the parked two hosts
    eng = FabricEngine(unstable, "ep", settings())
    assert eng.fabric.warm
    try:
        eng.set_params(scaled_params(unstable))
        eng.set_batch(*batch(unstable))
        with pytest.raises(PhaseError, match="state diverged"):
            eng.run_phase(Phase("free", 50))
    finally:
        eng.close()
    assert len(own_pool) == 0  # a fabric whose phase failed parks nothing, though its hosts would answer
    cold, _, _, _ = _warm_run(granularity="neuron", hosts=2)
    _kill(own_pool.parked[-1][2][0])  # a parked host dies while it waits: the group is ended, new hosts start
    _, _, _, warm = _warm_run(granularity="neuron", hosts=2)
    assert not warm and len(own_pool) == 2
    eng = FabricEngine(MODEL, "ep-symmetric", settings(granularity="neuron", hosts=2))
    assert eng.fabric.warm and len(own_pool) == 0
    try:
        survivor = ray_session.get(eng.fabric.hosts["H0"].__ray_call__.remote(lambda self: os.getpid()))
        eng.set_params(scaled_params(MODEL))
        eng.set_batch(*batch(MODEL, seed=2))
        _kill(eng.fabric.hosts["H1"])
        with pytest.raises(HostLost):
            eng.run_program(get_protocol("ep-symmetric").program(0.1, 30, 10))
    finally:
        eng.close()
    assert len(own_pool) == 1  # the survivor, aborted mid-phase, waits beside the lost host's empty bundle
    again, pids, _, warm = _warm_run(granularity="neuron", hosts=2)  # a new actor in that bundle only
    assert warm and survivor in pids and len(pids) == 2 and len(own_pool) == 2
    for k in cold:
        assert torch.equal(again[k], cold[k]), k


def test_a_fabric_the_cluster_cannot_hold_is_refused_naming_the_key(ray_session):
    from cluster.runtime.coordinator import FabricEngine
    from tests.test_fabric import MODEL, settings
    with pytest.raises(PlacementError, match="fabric.actor_cpus: 2 host actors need 3 CPU"):
        FabricEngine(MODEL, "ep-symmetric", settings(actor_cpus=1.5))


def _script(module, *args, timeout):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("EP_RAY_CONFIG", None)
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    return r, (json.loads(lines[-1]) if lines else None)


@pytest.mark.slow
def test_a_fabric_over_two_ray_nodes_trains_as_the_in_process_engine():
    """tests/multinode.py: two Ray nodes of 2 CPUs, ray_config.yaml's fabric section (1 CPU per host, pack): the
    three layer hosts land on both nodes, neighbours in consecutive bundles, and 3 batches of float64 training give
    the reference engine's parameters to 1e-12."""
    r, out = _script("tests.multinode", timeout=240)
    assert r.returncode == 0 and out is not None, r.stdout[-2000:] + r.stderr[-4000:]
    assert out["max_abs_diff"] <= 1e-12
    assert set(out["hosts"].values()) == set(out["nodes"]) and len(out["nodes"]) == 2  # from Ray's runtime context
    on = [out["bundles_on"][str(k)] for k in range(len(out["order"]))]
    assert on == [out["hosts"][h] for h in out["order"]]
    assert on[0] == on[1] != on[2]  # L1 and L2 share the first node; L3 (what no longer fits) the other
    assert out["fabric"]["wire"] == "tcp"


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only():
    r, out = _script("tests.listeners", timeout=120)
    assert r.returncode == 0 and out is not None, r.stderr[-4000:]
    assert out["node_ip"] == "127.0.0.1"
    assert out["listen"] and all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in out["listen"]), out
