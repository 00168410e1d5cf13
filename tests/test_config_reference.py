"""Typed settings: one default per key, an unknown key answered with the closest known one, and the generated key
reference (docs/reference/config.md) current with the code."""
import dataclasses

import pytest

from cluster.runtime.settings import DEFAULTS, FabricSettings
from experiments import config_reference
from experiments.config import Config, ConfigError, FabricSection, load_config


def test_checked_in_reference_is_current():
    with open(config_reference.OUT) as f:
        on_disk = f.read()
    assert on_disk == config_reference.render(), "stale: run python -m experiments.config_reference --write"


def test_reference_lists_every_key_with_its_default_and_readers():
    text = config_reference.render()
    for f in dataclasses.fields(Config):
        assert f"| `{f.name}` |" in text or f"### `{f.name}`" in text, f.name
    assert "| `fabric.hosts` | int | `0` |" in text
    row = next(line for line in text.splitlines() if line.startswith("| `N` |"))
    assert row.split(" | ")[-2] == "hep, hep-fast, hep-osc"  # the protocols whose nodes get N
    assert row.rstrip().endswith("| protocols/hep.py |")      # where its one default lives


@pytest.mark.parametrize("key, hint", [("betta=0.2", "'beta'"), ("fabric.hots=2", "'fabric.hosts'"),
                                       ("sizez=[4, 3]", "'sizes'")])
def test_unknown_key_names_the_closest(key, hint):
    with pytest.raises(ConfigError, match=f"did you mean {hint}"):
        load_config("train", [key])


def test_runtime_settings_refuse_unknown_keys_and_share_defaults():
    with pytest.raises(ValueError, match="did you mean 'hosts'"):
        FabricSettings.of({"hots": 2})
    for f in dataclasses.fields(FabricSection):  # the config's fabric keys take the runtime's defaults
        if f.default is not dataclasses.MISSING and f.default is not None:
            assert f.default == getattr(DEFAULTS, f.name), f.name
    c = Config()
    assert (c.dtype, c.transport, c.granularity, c.optimizer, c.momentum) == \
        (DEFAULTS.dtype, DEFAULTS.transport, DEFAULTS.granularity, DEFAULTS.optimizer, DEFAULTS.momentum)


def test_a_protocol_declares_its_own_settings_and_their_one_default():
    from dataclasses import dataclass

    from protocols import PROTOCOLS, get_protocol
    from protocols.base import Protocol, setting_default
    from protocols.hep import HolomorphicSettings
    from protocols.rhel import EchoSettings
    assert get_protocol("hep").keys == ("N",) and get_protocol("hep-fast").keys == ("N",)
    assert get_protocol("hep-osc").keys == ("N", "periods") and get_protocol("heb").keys == ("sided", "nudge")
    assert get_protocol("rhel").configured(sided="one").settings == {"sided": "one", "nudge": "reference"}
    with pytest.raises(ValueError, match="protocol hep has no setting 'M'"):
        get_protocol("hep").configured(M=3)
    c = Config()  # the config's defaults are the protocols' own
    assert (c.N, c.sided, c.nudge) == (HolomorphicSettings().N, EchoSettings().sided, EchoSettings().nudge)

    @dataclass(frozen=True)
    class Other:
        N: int = 5

    class Disagreeing(Protocol):
        name = "disagreeing"
        Settings = Other

    with pytest.raises(RuntimeError, match="disagreeing defaults"):
        setting_default("N", [*PROTOCOLS.values(), Disagreeing()])


def test_sections_hold_every_key_once_and_the_flat_form_round_trips():
    import pickle

    from experiments.config import FLAT, FLAT_SECTIONS, _build
    c = load_config("train", ["learn.beta=0.3", "T1=12"])
    assert (c.beta, c.learn.beta, c.T1) == (0.3, 0.3, 12)  # a top-level key reads through to its section
    assert load_config("train", ["learn.beta=0.3", "beta=0.2"]).beta == 0.2  # one key, whichever way it is written
    assert _build(Config, c.to_dict()) == c and pickle.loads(pickle.dumps(c)) == c
    assert c.replace(seed=3).run.seed == 3 and c.replace(seed=3).learn == c.learn
    assert sorted(FLAT) == sorted(f.name for cls in FLAT_SECTIONS.values() for f in dataclasses.fields(cls))
    # where a family's or protocol's key is declared: in its own file, not in the config module
    net, learn = FLAT_SECTIONS["net"], FLAT_SECTIONS["learn"]
    assert net.declared_by["T"].__module__ == "experiments.families.hamiltonian"
    assert learn.declared_by["N"].__module__ == "protocols.hep"


@pytest.mark.parametrize("sets, field, msg", [
    (["learn.hosts=2"], "learn.hosts", "hosts is a key of section fabric: write fabric.hosts"),
    (["net.beta=0.2"], "net.beta", "write learn.beta or beta"),
    (["learn.bta=2"], "learn.bta", "did you mean 'learn.beta'"),
    (["learn=3"], "learn", "is a section"),
    (["integrater=euler"], "integrater", "did you mean 'integrator'"),
])
def test_a_key_in_the_wrong_place_is_named_with_its_place(sets, field, msg):
    with pytest.raises(ConfigError) as err:
        load_config("train", sets)
    assert err.value.field == field and msg in str(err.value)


def test_a_family_checks_its_own_keys():
    with pytest.raises(ConfigError, match="integrator: 'rk4' is not one of"):
        load_config("two-mass", ["integrator=rk4"])      # the Hamiltonian family's key
    with pytest.raises(ConfigError, match="feedback_init: 'bogus' is not one of"):
        load_config("train", ["feedback_init=bogus"])    # the layered family's key
