"""The couplings of a Hamiltonian model (nodes/hamiltonian.py), with their physics in one place: springs between
dynamic units and the drive of the onsite potentials.

A Spring (W of shape (dst size, src size), both groups dynamic) adds to V

    1/2 sum_ij W_ij (phi_dst,i - phi_src,j)^2,     dV/dW_ij = 1/2 (phi_dst,i - phi_src,j)^2

so its force on the destination is  F_dst = W phi_src - phi_dst * (W 1)  and on the source
F_src = W^T phi_dst - phi_src * (W^T 1); both ends hold W (the destination its rows, the source a replica of its
columns) and read the other end's positions.

A Drive (W of shape (dst size, src size), an optional bias b) adds to the drive d of its destination's onsite
potential (nodes/potentials.py)

    d_dst += W u + b,      dV/dW = dV/dd u^T,  dV/db = dV/dd

where u is the input u_t (the boundary sequence, from the input group) or the half-step positions of a layer below
(a dynamic source: stacked layers). Only the destination holds W; back along a Drive from a dynamic group goes the
input gradient (message kind "g": q W[:, the source block's columns]).

A structural `mask` (0/1, (dst size, src size)) keeps its zeros at zero and decides which blocks are neighbours.
Parameters, shapes and the seeded draws are those of nodes/dense.Dense (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W
then b, from one generator); a Hamiltonian model's own `init` then sets them.

Per logical node, its terms (HamiltonianTerm) are what the node's rule (nodes/leapfrog.py) asks, per step, at the
half-step positions `pos` (B, w):

    drive(d, W, x_t, below, rows)          d plus its part of the drive (d None: its part alone)
    force(f, pos, inbox, W)                f plus its force on the node's units, not through d (a spring's)
    dV(pos, inbox, dd, x_t, below, copies) dV/dW of its held tensor, batch mean per copy (C, *shape)

with `dd` = dV/dd (B, w) of the onsite potential, `below` the layers below's positions at the copies' reference
{slot: (B, width)} and `copies` the number of echo copies side by side in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nodes.dense import WeightMatrix
from nodes.interface import Grad, Held, Interaction, Term, connected
from nodes.leapfrog import per_copy_mean


# ---- its terms -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HamiltonianTerm(Term):
    """A term of a Hamiltonian node (see the module's docstring): by default no part of d, no force of its own.
    `order` sorts a node's terms (lower first): the springs, then the drive's parts from the input, from the layers
    below and the biases, the order in which they add up. `couples`: a spring, whose force reads each echo copy's own
    neighbouring positions; `reference`: it reads its slot as an input, the layer below's positions at the copies'
    reference, the same for every copy. `mask`: the structural mask of its held tensor (None: dense)."""

    mask: torch.Tensor | None = None

    couples = False
    reference = False

    def drive(self, d, W, x_t, below, rows):
        return d

    def force(self, f, pos, inbox, W):
        return f

    def dV(self, pos, inbox, dd, x_t, below, copies):
        raise NotImplementedError(f"term {self.kind} of {self.weight}: no dV/dW")

    def masked(self, G):
        return G if self.mask is None else G * self.mask.to(G.dtype)


@dataclass(frozen=True)
class SpringRows(HamiltonianTerm):
    """The destination's rows W (width, d_src): F += phi_src W^T - pos * (W 1); dV/dW = 1/2 (pos_i - phi_src,j)^2."""

    order = -1
    couples = True

    def force(self, f, pos, inbox, W):
        return f + inbox[self.slot] @ W.T - pos * W.sum(1)

    def dV(self, pos, inbox, dd, x_t, below, copies):
        diff = pos[:, :, None] - inbox[self.slot][:, None, :]
        return self.masked(per_copy_mean(0.5 * diff * diff, copies))


@dataclass(frozen=True)
class SpringCols(HamiltonianTerm):
    """The source's replica of W's columns (d_dst, width): F += phi_dst W - pos * (W^T 1); dV/dW = 1/2 (phi_dst,i -
    pos_j)^2."""

    order = -1
    couples = True

    def force(self, f, pos, inbox, W):
        return f + inbox[self.slot] @ W - pos * W.sum(0)

    def dV(self, pos, inbox, dd, x_t, below, copies):
        diff = inbox[self.slot][:, :, None] - pos[:, None, :]
        return self.masked(per_copy_mean(0.5 * diff * diff, copies))


def _outer_mean(dd, u, copies: int):
    """dV/dd^T u, batch mean per copy: (C, w, width)."""
    return torch.einsum("cbi,cbj->cij", dd.reshape(copies, -1, dd.shape[1]),
                        u.reshape(copies, -1, u.shape[1])) / (dd.shape[0] // copies)


@dataclass(frozen=True)
class DriveInput(HamiltonianTerm):
    """d += u_t W^T, u_t the input at the step (a boundary signal: it reads x); dV/dW = dV/dd u_t^T."""

    order = 0
    reads = ("x",)

    def drive(self, d, W, x_t, below, rows):
        v = x_t @ W.T
        return v if d is None else d + v

    def dV(self, pos, inbox, dd, x_t, below, copies):
        return self.masked(_outer_mean(dd, x_t, copies))


@dataclass(frozen=True)
class DriveBelow(HamiltonianTerm):
    """d += phi_half W^T, phi_half the layer below's half-step positions at the copies' reference; dV/dW = dV/dd
    phi_half^T."""

    order = 1
    reference = True

    def drive(self, d, W, x_t, below, rows):
        v = below[self.slot] @ W.T
        return v if d is None else d + v

    def dV(self, pos, inbox, dd, x_t, below, copies):
        return self.masked(_outer_mean(dd, below[self.slot], copies))


@dataclass(frozen=True)
class DriveBias(HamiltonianTerm):
    """d += b; dV/db = dV/dd."""

    order = 2

    def drive(self, d, W, x_t, below, rows):
        return W.expand(rows, -1).clone() if d is None else d + W

    def dV(self, pos, inbox, dd, x_t, below, copies):
        return per_copy_mean(dd, copies)


@dataclass(frozen=True)
class DV(Grad):
    """G of a Hamiltonian's parameter: dV/dtheta, which the node's rule collects from its terms (HamiltonianTerm.dV),
    not a product of signals."""


# ---- the interactions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spring(WeightMatrix, Interaction):
    """V contains 1/2 sum_ij W_ij (phi_dst,i - phi_src,j)^2 between two dynamic groups (or within one); W has shape
    (dst size, src size), `mask` its structural zeros (a tuple of dst-size tuples of 0/1; None: dense)."""

    src: str
    dst: str
    W: str
    mask: tuple | None = None

    reciprocal = True  # both ends feel the spring's force from the same W

    def validate(self, model) -> None:
        if model.group(self.src).role == "input":
            raise ValueError(f"model {model.name}: spring {self.W} couples positions; its source {self.src} is the "
                             f"clamped input (a Drive reads the input)")
        super().validate(model)

    def share(self, model, b, need) -> tuple:
        """The destination's blocks own W's rows, the source's hold a replica of its columns; each reads the other
        end's positions."""
        held, terms, grads = {}, [], {}
        if self.dst == b.group:  # a spring's source is never the input (validate)
            self.share_rows(model, b, need, held, terms, grads, set(),
                            lambda slot, mask: (SpringRows("rows", self.W, slot, mask), DV("spring", slot, mask)))
        if self.src == b.group:
            self.share_columns(model, b, need, held, terms, grads,
                               lambda local, slot, mask: SpringCols("cols", local, slot, mask),
                               lambda slot, mask: DV("spring", slot, mask))
        return held, terms, grads, set()

    def backward_sends(self, model, by_group) -> list:
        """None: both ends read each other's positions."""
        return []

    def add_drive(self, model, u, params, a) -> None:
        """No part of the drive d: its force is its own (add_force)."""

    def add_force(self, model, F, params, phi, span):
        """F + its force on both ends, over whole groups: F_dst += phi_src W^T - phi_dst (W 1), F_src += phi_dst W -
        phi_src (W^T 1)."""
        W, sd, ss = params[self.W], slice(*span[self.dst]), slice(*span[self.src])
        dst, src = phi[:, sd], phi[:, ss]
        add = torch.zeros_like(F)
        add[:, sd] = src @ W.T - dst * W.sum(1)
        add[:, ss] = add[:, ss] + dst @ W - src * W.sum(0)
        return F + add


@dataclass(frozen=True)
class Drive(WeightMatrix, Interaction):
    """d_dst += W u + b into the destination's onsite potential, u the input (src the input group) or the half-step
    positions of a dynamic source (a layer below); W has shape (dst size, src size), `mask` its structural zeros."""

    src: str
    dst: str
    W: str
    b: str | None = None
    mask: tuple | None = None


    def share(self, model, b, need) -> tuple:
        """The destination's blocks own W's rows and b's entries, and read the input (x) or the source's positions."""
        held, terms, grads, boundary = {}, [], {}, set()
        if self.dst != b.group:
            return held, terms, grads, boundary
        self.share_rows(model, b, need, held, terms, grads, boundary,
                        lambda slot, mask: (DriveBelow("below", self.W, slot, mask), DV("below", slot, mask)),
                        lambda mask: (DriveInput("input", self.W, None, mask), DV("input", "x", mask)))
        if self.b:
            held[self.b] = Held(self.b, (b.lo, b.hi), None, "primary")
            terms.append(DriveBias("bias", self.b))
            grads[self.b] = DV("bias")
        return held, terms, grads, boundary

    def backward_sends(self, model, by_group) -> list:
        """Kind "g" from a dynamic source: [(sender, (dst node, held W, lo, hi))]: each destination block c sends each
        other source block b it reads q @ W[c rows, b columns] (the input gradient)."""
        if model.group(self.src).role == "input":
            return []
        return [(c.node_id, (b.node_id, self.W, b.lo, b.hi)) for c in by_group.get(self.dst, ())
                for b in by_group.get(self.src, ())
                if b.node_id != c.node_id and connected(self.mask, (c.lo, c.hi), (b.lo, b.hi))]

    def add_drive(self, model, u, params, a) -> None:
        """u[dst] += W a_src + b over whole groups (a_src None: no input at this step; the bias alone broadcasts over
        the batch)."""
        x = a[self.src]
        v = x @ params[self.W].T if x is not None else None
        if self.b:
            v = params[self.b] if v is None else v + params[self.b]
        if v is not None:
            u[self.dst] = u[self.dst] + v if self.dst in u else v

    def add_force(self, model, F, params, phi, span):
        """F: its force enters through the onsite potential's drive."""
        return F
