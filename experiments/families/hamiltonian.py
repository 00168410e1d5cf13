"""The Hamiltonian models (nodes/hamiltonian.py: two masses, spring chains, Hamiltonian recurrent units and their
stacks; nodes/leapfrog.py: the nodes' leapfrog) under the echo protocols (rhel, heb), learning from sequences
(experiments/sequences.py), with the experiments two-mass, chain and hru-sequence (experiments/oscillators.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from experiments.errors import ConfigError
from experiments.families import Command, Family, resolve
from nodes.hamiltonian import INTEGRATORS


@dataclass(frozen=True)
class HamiltonianNetSettings:
    T: int = 100                   # Hamiltonian models: the sequence length, the number of forward (and echo) steps
    integrator: str = "leapfrog"   # Hamiltonian models: leapfrog (position Verlet, force at the half step); the
                                   # ablations start-force and euler are not time-reversible (refused by rhel, heb)
    damping: float = 0.0           # Hamiltonian models: a friction -damping * pi (dissipative: refused by rhel, heb)


@dataclass(frozen=True)
class EchoLearnSettings:
    eps: float = 0.01              # rhel / heb: the echo's nudging strength (each copy's nudge is +-eps or 0)


@dataclass(frozen=True)
class EchoSection:
    """The Hamiltonian echo experiments (experiments/oscillators.py)."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])   # hru-sequence: one RHEL and one BPTT run per seed
    audit_eps: float = 1e-4                                  # hru-sequence: eps of each seed's one-batch audit


def validate(cfg, protocol=None) -> None:
    """The integrator, then the sequence keys (sizes per model, T, the dataset: experiments/sequences.py)."""
    if cfg.integrator not in INTEGRATORS:
        raise ConfigError("integrator", f"{cfg.integrator!r} is not one of {list(INTEGRATORS)}")
    resolve("experiments.sequences:validate_sequences")(cfg, protocol)


def describe(model) -> dict:
    """A Hamiltonian model built in Python: its name and step (its config sizes say how it was built)."""
    return {"model": model.name, "dt": model.dt}


FAMILY = Family(
    name="hamiltonian",
    nodes=("nodes.hamiltonian",),
    physics=("leapfrog",),
    training="experiments.echo_train:EchoTraining",
    audit="experiments.echo:run_echo_audit",
    headline="experiments.echo:headline",
    validate=f"{__name__}:validate",
    describe=f"{__name__}:describe",
    settings={"net": HamiltonianNetSettings, "learn": EchoLearnSettings},
    sections={"echo": EchoSection},
    commands={
        "two-mass": Command("experiments.oscillators:run_two_mass", "two-mass",
                            "two masses learn a target trajectory by RHEL (and by BPTT from the same start)"),
        "chain": Command("experiments.oscillators:run_chain", "chain",
                         "a spring chain learns a teacher chain's last-mass trajectory"),
        "hru-sequence": Command("experiments.oscillators:run_hru_sequence", "hru-sequence",
                                "a Hamiltonian recurrent unit classifies sequences, RHEL against BPTT per seed"),
    },
    sweep_keys=("echo_error",),
)
