"""One declaration of a layered network: unit groups, parameters, interactions (ALGORITHMS.md §1).

From a `LayeredModel` the rest of the project derives everything it needs:
  * the parameter list and shapes (`W{n}`: (d_{n+1}, d_n), `b{n}`: (d_{n+1},)),
  * a partition of the units into fabric nodes (`partition`), and the node graph (`neighbours`),
  * what each node holds (`held`): the rows of W{n-1}, b{n-1} it owns and its replica of the columns of W{n},
  * the legal edges for the locality audit.
Layer 0 is the clamped input; it is a boundary signal, not a node: the nodes of layer 1 receive x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from nodes.activations import ACTIVATIONS

MODELS = ("energy", "prototypical")
COORDINATOR = "coordinator"


@dataclass(frozen=True)
class Dense:
    """Interaction between layer n (pre) and layer n+1 (post) through W{n}, b{n}.

    energy:        E ∋ -rho(s_{n+1}) . (W_n rho(s_n) + b_n)
    prototypical:  Phi ∋ s_{n+1} . (W_n s_n + b_n)
    Its partial with respect to the post signal is W_n a_n + b_n, with respect to the pre signal W_n^T a_{n+1}.
    """

    n: int

    @property
    def W(self) -> str:
        return f"W{self.n}"

    @property
    def b(self) -> str:
        return f"b{self.n}"


@dataclass(frozen=True)
class Block:
    """A fabric node's share of the units: layer `layer`, units [lo, hi)."""

    node_id: str
    layer: int
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class LayeredModel:
    kind: str
    sizes: tuple
    activation: str
    dt: float = 1.0
    interactions: tuple = field(init=False)

    def __post_init__(self):
        if self.kind not in MODELS:
            raise ValueError(f"model: unknown model {self.kind!r}; expected one of {MODELS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: unknown activation {self.activation!r}; expected one of {tuple(ACTIVATIONS)}")
        if len(self.sizes) < 2 or any(int(d) < 1 for d in self.sizes):
            raise ValueError(f"sizes: need at least two layer sizes, each >= 1; got {list(self.sizes)}")
        object.__setattr__(self, "sizes", tuple(int(d) for d in self.sizes))
        object.__setattr__(self, "interactions", tuple(Dense(n) for n in range(self.N)))

    @property
    def N(self) -> int:
        """Index of the output layer (number of parameter layers)."""
        return len(self.sizes) - 1

    def param_shapes(self) -> dict:
        shapes = {}
        for it in self.interactions:
            shapes[it.W] = (self.sizes[it.n + 1], self.sizes[it.n])
            shapes[it.b] = (self.sizes[it.n + 1],)
        return shapes

    def param_layer(self, name: str) -> int:
        """n for `W{n}` / `b{n}` (the index of its learning rate)."""
        return int(name[1:])

    def init_params(self, seed: int, dtype=torch.float64) -> dict:
        """Uniform(-1/sqrt(d_n), 1/sqrt(d_n)) for W{n} and b{n} (torch.nn.Linear's default), seeded."""
        gen = torch.Generator().manual_seed(int(seed))
        params = {}
        for name, shape in self.param_shapes().items():
            bound = 1.0 / math.sqrt(self.sizes[self.param_layer(name)])
            params[name] = ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound).to(dtype)
        return params

    # ---- partition into fabric nodes -------------------------------------------------------------
    def partition(self, granularity: str = "layer", split: int = 1) -> list:
        """Blocks of units, one per fabric node, for layers 1..N.

        `layer`: one block per layer, cut into `split` near-equal blocks; `neuron`: one block per unit.
        """
        blocks = []
        for n in range(1, self.N + 1):
            d = self.sizes[n]
            if granularity == "neuron":
                cuts = list(range(d + 1))
            elif granularity == "layer":
                k = max(1, min(int(split), d))
                cuts = [round(i * d / k) for i in range(k + 1)]
            else:
                raise ValueError(f"granularity: expected 'layer' or 'neuron', got {granularity!r}")
            single = len(cuts) == 2
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                node_id = f"L{n}" if single else f"L{n}.{lo}"
                blocks.append(Block(node_id, n, lo, hi))
        return blocks

    def neighbours(self, blocks: list) -> dict:
        """node id -> ids of the nodes it shares an interaction with (layers n-1 and n+1; input excluded)."""
        by_layer = {}
        for b in blocks:
            by_layer.setdefault(b.layer, []).append(b)
        return {
            b.node_id: [c.node_id for m in (b.layer - 1, b.layer + 1) for c in by_layer.get(m, [])]
            for b in blocks
        }

    def held(self, block: Block) -> dict:
        """Local tensor name -> (parameter, row slice, column slice, role) for the synapses a block holds.

        W_in = W{n-1}[lo:hi, :] and b_in = b{n-1}[lo:hi] are owned (primary); W_out = W{n}[:, lo:hi] is this
        end's replica of the symmetric edge to layer n+1 (absent at the output layer).
        """
        n, rows = block.layer, slice(block.lo, block.hi)
        held = {
            "W_in": (f"W{n - 1}", rows, slice(None), "primary"),
            "b_in": (f"b{n - 1}", rows, None, "primary"),
        }
        if n < self.N:
            held["W_out"] = (f"W{n}", slice(None), rows, "replica")
        return held

    def block_params(self, block: Block, params: dict) -> dict:
        """Slice a full parameter dict into the tensors `block` holds (contiguous copies)."""
        out = {}
        for local, (name, rows, cols, _) in self.held(block).items():
            t = params[name][rows] if cols is None else params[name][rows, cols]
            out[local] = t.clone().contiguous()
        return out

    def legal_edges(self, blocks: list) -> set:
        """Directed (src, dst) pairs allowed to carry data-plane messages."""
        return {(a, b) for a, nbrs in self.neighbours(blocks).items() for b in nbrs}
