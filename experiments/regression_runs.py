"""The runs the regression harness records (experiments/regression.py): every shipped config's quick audit and a
few short trainings, the configs it skips and why, the keys it never compares, and the environment of every run."""
from __future__ import annotations

import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "experiments", "configs")
MANIFEST = "manifest.json"
FORMAT = 1

# Environment of every recorded subprocess: one BLAS / OpenMP thread (a reduction's order does not depend on the
# machine's cores), a fixed hash seed (no set- or dict-order that depends on string hashing), Ray's log dedup off.
RUN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "RAY_DEDUP_LOGS": "0"}

# Flattened-key components excluded from the comparison, with the reason: they vary between two runs of the same
# code (or name where a run was written) and say nothing about its results.
EXCLUDED = {
    "seconds": "wall-clock time of an epoch (train metrics, checkpoint tally)",
    "train_seconds": "wall-clock time of an epoch's training batches",
    "wall_s": "wall-clock time (audit of a Hamiltonian model, echo training epochs)",
    "memory": "bytes held in memory by the nodes and by BPTT's autograd (allocator-dependent)",
    "node_kept_bytes": "bytes held in memory by a node after a batch",
    "bptt_saved_bytes": "bytes BPTT's autograd keeps",
    "date": "calendar date",
    "time": "wall-clock time",
    "created": "when the recording was made",
    "path": "a file-system path",
    "out": "the output folder",
    "data_dir": "a file-system path",
}

# The quick settings shared by the audits of layered nets (the audit itself runs in float64).
LAYERED = ("dtype=float64", "batch=4")


def _run(name, command, config, sets=(), family="", note=""):
    return {"name": name, "command": command, "config": config, "sets": list(sets), "family": family, "note": note}


# Every run: a name (its folder in DIR), the CLI command, the shipped config, the --set overrides. The engine is
# the config's own (fabric unless the config says reference) unless a --set says otherwise; at least one fabric
# run per model family.
RUNS = [
    # ---- audits: energy ----
    _run("audit-audit", "audit", "audit", (*LAYERED, "T1=60", "T2=20", "granularity=neuron", "fabric.hosts=2"),
         "energy", "neuron granularity on 2 host actors"),
    _run("audit-gdu-energy-toy", "audit", "gdu-energy-toy", ("T1=60", "T2=10"), "energy", "steps=true (GDU series)"),
    _run("audit-hep-toy", "audit", "hep-toy", ("T1=60", "T2=40"), "energy"),
    _run("audit-eb1h-mnist", "audit", "eb1h-mnist", (*LAYERED, "T1=20", "T2=6", "engine=reference", "dataset=random"),
         "energy", "MNIST files absent here: random data sized from the net"),
    # ---- audits: prototypical ----
    _run("audit-train", "audit", "train", (*LAYERED, "T1=15", "T2=5"), "prototypical"),
    _run("audit-cep-digits", "audit", "cep-digits", (*LAYERED, "T1=15", "T2=6"), "prototypical"),
    _run("audit-cep-tradeoff", "audit", "cep-tradeoff", (*LAYERED, "T1=15", "T2=6"), "prototypical"),
    _run("audit-cep1h-mnist5k", "audit", "cep1h-mnist5k", (*LAYERED, "T1=15", "T2=6", "engine=reference"),
         "prototypical"),
    _run("audit-ep1h-mnist5k", "audit", "ep1h-mnist5k", (*LAYERED, "T1=15", "T2=5", "engine=reference"),
         "prototypical"),
    _run("audit-p1h-mnist", "audit", "p1h-mnist", (*LAYERED, "T1=15", "T2=6", "engine=reference", "dataset=random"),
         "prototypical", "MNIST files absent here: random data sized from the net"),
    _run("audit-p2h-mnist", "audit", "p2h-mnist", (*LAYERED, "T1=20", "T2=6", "engine=reference", "dataset=random"),
         "prototypical", "MNIST files absent here: random data sized from the net"),
    _run("audit-pmlp-mnist", "audit", "pmlp-mnist", (*LAYERED, "T1=15", "T2=5", "engine=reference",
                                                      "dataset=random"),
         "prototypical", "MNIST files absent here: random data sized from the net"),
    _run("audit-pmlp-mnist5k", "audit", "pmlp-mnist5k", (*LAYERED, "T1=15", "T2=5", "engine=reference"),
         "prototypical"),
    _run("audit-sweep", "audit", "sweep", (*LAYERED, "T1=30", "T2=20"), "prototypical"),
    _run("audit-hep-depth", "audit", "hep-depth", (*LAYERED, "T1=20", "T2=8"), "prototypical"),
    _run("audit-hep-depth-act", "audit", "hep-depth-act", (*LAYERED, "T1=20", "T2=8"), "prototypical"),
    _run("audit-hep-noise", "audit", "hep-noise", (*LAYERED, "T1=20", "T2=10"), "prototypical"),
    _run("audit-hep-noise-mnist5k", "audit", "hep-noise-mnist5k", (*LAYERED, "T1=15", "T2=10", "noise=0.04"),
         "prototypical", "with noise 0.04 (the config's noisy grid point)"),
    # ---- audits: prototypical-asym ----
    _run("audit-cvf-digits", "audit", "cvf-digits", (*LAYERED, "T1=15", "T2=6"), "prototypical-asym"),
    _run("audit-cvf1h-mnist5k", "audit", "cvf1h-mnist5k", (*LAYERED, "T1=15", "T2=6", "engine=reference"),
         "prototypical-asym"),
    # ---- audits: vector-field, vector-graph ----
    _run("audit-aep-feedforward-digits", "audit", "aep-feedforward-digits", (*LAYERED, "T1=15", "T2=15"),
         "vector-field"),
    _run("audit-compare-nonconservative", "audit", "compare-nonconservative", (*LAYERED, "T1=20", "T2=10"),
         "vector-field"),
    _run("audit-compare-nonconservative-mnist5k", "audit", "compare-nonconservative-mnist5k",
         (*LAYERED, "T1=20", "T2=10", "protocol=dyadic"), "vector-field", "protocol dyadic (one of its settings)"),
    _run("audit-toy-nonconservative", "audit", "toy-nonconservative", ("T1=2000", "T2=2000"), "vector-graph",
         "replay of the shipped bundle, 2,000 of its 20,000 steps per phase"),
    _run("audit-toy-nonconservative-neuron", "audit", "toy-nonconservative",
         ("T1=100", "T2=100", "engine=fabric", "granularity=neuron", "fabric.hosts=2"), "vector-graph",
         "replay on the neuron fabric, 2 host actors"),
    # ---- audits: Hamiltonian ----
    _run("audit-two-mass", "audit", "two-mass", ("T=200",), "hamiltonian", "neuron fabric"),
    _run("audit-rhel-two-mass", "audit", "rhel-two-mass", ("T=200",), "hamiltonian", "neuron fabric"),
    _run("audit-chain", "audit", "chain", ("T=30", "dt=0.5", "batch=2"), "hamiltonian",
         "neuron fabric, 4 host actors; dt 0.5 so that 30 steps reach the last mass"),
    _run("audit-rhel-chain-logcosh", "audit", "rhel-chain-logcosh", ("T=40", "dt=0.5", "batch=2"), "hamiltonian",
         "dt 0.5 so that 40 steps reach the last mass"),
    _run("audit-hru-sequence", "audit", "hru-sequence", ("T=20", "batch=4", "dataset=synthetic-motion"),
         "hamiltonian", "aeon's BasicMotions absent here: the synthetic stand-in"),
    # ---- audits: clamped (contrastive and coupled learning) ----
    _run("audit-cpl-digits", "audit", "cpl-digits", (*LAYERED, "T1=15", "T2=6"), "prototypical",
         "coupled learning, eta = beta"),
    _run("audit-cl-digits", "audit", "cl-digits", (*LAYERED, "T1=15", "T2=6", "engine=reference"), "prototypical",
         "contrastive learning"),
    # ---- one short training epoch ----
    _run("train-train", "train", "train", ("epochs=1", "T1=10", "T2=4", "batch=64", "checkpoint_every=0"),
         "prototypical", "shipped float32"),
    _run("train-cep-digits", "train", "cep-digits",
         ("epochs=1", "T1=10", "T2=4", "batch=64", "dtype=float64", "checkpoint_every=0"), "prototypical"),
    _run("train-cvf-digits", "train", "cvf-digits",
         ("epochs=1", "T1=10", "T2=4", "batch=64", "dtype=float64", "engine=reference", "checkpoint_every=0"),
         "prototypical-asym"),
    _run("train-compare-nonconservative", "train", "compare-nonconservative",
         ("epochs=1", "T1=10", "T2=6", "batch=64", "dtype=float64", "bptt_baseline=true", "residual_tol=0.5",
          "checkpoint_every=0"),
         "vector-field", "paired BPTT baseline, convergence gate"),
    _run("train-two-mass", "train", "two-mass", ("epochs=2", "T=200"), "hamiltonian", "neuron fabric"),
    _run("train-hru-sequence", "train", "hru-sequence",
         ("epochs=1", "T=20", "batch=40", "dataset=synthetic-motion", "engine=reference", "bptt_baseline=true"),
         "hamiltonian", "synthetic stand-in, paired BPTT baseline"),
]

# Shipped configs not run, and why.
SKIPPED = {
    "bench": "timings only (the `bench` command): no result to compare; its 784-wide sizes do not fit the default "
             "dataset of an audit",
}
