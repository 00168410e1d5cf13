"""The Dense interaction: a weight matrix between two unit groups, with its physics in one place.

E (or the primitive Phi) contains a(dst) . (W a(src) + b), W of shape (dst size, src size). Its partials drive

    the destination:  u_dst += W a_src + b          (every Dense term)
    the source:       u_src += W^T a_dst            (a symmetric term only: the source then holds a replica of W's
                                                     columns, the destination owns its rows)

and G of its parameters (docs/algorithms.md §1: dE/dtheta at a state, batch mean) is, per logical node,

    rows     (owner of W[rows, :]):       G = -a_own^T a_src / B
    cols     (replica of W[:, cols]):     G = -a_dst^T a_own / B
    clamped  (owner, the source is x):    G = -a_own^T x / B
    bias     (owner of b[rows]):          G = -mean a_own

A structural `mask` (0/1, (dst size, src size)) keeps its zeros at zero and decides which blocks are neighbours
through this term. Directed terms (`symmetric=False`) drive their destination only: feedback weights `B{n}` are
directed Dense terms from layer n+1 to layer n, owned by layer n.

The same drive over whole groups, for the centralised references (cluster/truth/nonconservative.py), with
a = rho(s) of a dynamic group and x of the input, and its Jacobian d u / d s (rho' = rho'(s)):

    u_dst += a_src W^T + b,                  d u_dst / d s_src = W diag(rho'_src)       (a dynamic source)
    u_src += a_dst W    (symmetric),         d u_src / d s_dst = W^T diag(rho'_dst)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nodes.interface import Grad, Held, Interaction, NoGrad, Term, connected


def block_mask(mask, rows, cols):
    """The (rows, cols) sub-block of a structural mask as a tensor, or None when dense."""
    if mask is None:
        return None
    return torch.tensor([row[cols[0]:cols[1]] for row in mask[rows[0]:rows[1]]], dtype=torch.float64)


def replica_name(it: "Dense", group: str) -> str:
    """The local name of the replica of a symmetric term's W held by a block of its source group (suffixed when the
    block's group is the destination too, where it also owns rows of W)."""
    return it.W if it.dst != group else f"{it.W}.replica"


# ---- a weight matrix W (dst size, src size) with an optional bias b (dst size,) and structural mask -------------
class WeightMatrix:
    """The parameters of an interaction that holds W (dst size, src size), an optional bias b (dst size,) and a
    structural mask (a tuple of dst-size tuples of 0/1; None: dense), whatever its physics (Dense here, the
    Hamiltonian couplings of nodes/springs.py): their validation, shapes, seeded init and masks. A subclass declares
    the fields `src`, `dst`, `W`, `mask` and, if it has one, `b`."""

    def bias_of(self, group: str) -> str | None:
        return getattr(self, "b", None) if group == self.dst else None

    def validate(self, model) -> None:
        """Raise ValueError unless the mask is None or (dst size, src size)."""
        if self.mask is not None and (len(self.mask) != model.group(self.dst).size
                                      or any(len(r) != model.group(self.src).size for r in self.mask)):
            raise ValueError(f"model {model.name}: mask of {self.W} is not ({self.dst} size, {self.src} size)")

    def shapes(self, model) -> dict:
        """{W: (dst size, src size), b: (dst size,) if any}."""
        out = {self.W: (model.group(self.dst).size, model.group(self.src).size)}
        if getattr(self, "b", None):
            out[self.b] = (model.group(self.dst).size,)
        return out

    def init(self, model, gen, scale: float) -> dict:
        """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W then b (torch.nn.Linear's default), times `scale`, drawn from
        `gen`; a mask's structural zeros stay zero."""
        bound = 1.0 / math.sqrt(model.group(self.src).size)
        shapes, out = self.shapes(model), {}
        for name in shapes:
            t = (torch.rand(shapes[name], generator=gen, dtype=torch.float64) * 2 - 1) * bound * scale
            if name == self.W and self.mask is not None:
                t = t * torch.tensor(self.mask, dtype=torch.float64)
            out[name] = t
        return out

    def masks(self) -> dict:
        """{W: the structural mask as a 0/1 tensor} (none when dense)."""
        return {} if self.mask is None else {self.W: torch.tensor(self.mask, dtype=torch.float64)}

    def share_rows(self, model, b, need, held: dict, terms: list, grads: dict, boundary: set, from_signal,
                   from_input=None) -> None:
        """A destination block's W[its rows, :], as owner, reading the source's signal (`from_signal(slot, mask)`
        gives its (term, G)) or, from the input group, the clamped input x (`from_input(mask)`); NoGrad where the
        mask leaves the block no source (its rows are structural zeros, and x is not routed to it)."""
        own, src = (b.lo, b.hi), model.group(self.src)
        held[self.W] = Held(self.W, own, None, "primary")
        mask = block_mask(self.mask, own, (0, src.size))
        if src.role == "input":
            if not connected(self.mask, own, (0, src.size)):
                grads[self.W] = NoGrad()
                return
            term, grad = from_input(mask)
            boundary.add("x")
        else:
            slot = need(self.src, self.mask, rows=own)
            if slot is None:
                grads[self.W] = NoGrad()
                return
            term, grad = from_signal(slot, mask)
        terms.append(term)
        grads[self.W] = grad

    def share_columns(self, model, b, need, held: dict, terms: list, grads: dict, term, grad) -> None:
        """A source block's replica of W[:, its columns], reading the destination's signal: adds it to `held`, its
        term `term(local, slot, mask)` and G `grad(slot, mask)` (NoGrad where the mask leaves it no neighbour)."""
        own = (b.lo, b.hi)
        local = replica_name(self, b.group)
        held[local] = Held(self.W, None, own, "replica")
        mask = block_mask(self.mask, (0, model.group(self.dst).size), own)
        slot = need(self.dst, self.mask, cols=own)
        if slot is None:
            grads[local] = NoGrad()
        else:
            terms.append(term(local, slot, mask))
            grads[local] = grad(slot, mask)


# ---- its drive terms -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fwd(Term):
    """u += a_slot W^T (W the node's rows of the term, (width, d_slot))."""

    def operand(self, W):
        return W.T


@dataclass(frozen=True)
class Bwd(Term):
    """u += a_slot W (W the node's replica columns of a symmetric term, (d_slot, width))."""

    def operand(self, W):
        return W


@dataclass(frozen=True)
class Clamped(Term):
    """u += x W^T (x the boundary signal of an input group; constant within a batch)."""

    constant = True
    order = 1
    reads = ("x",)

    def add_const(self, u, W, boundary, dtype):
        x = boundary["x"].to(dtype)
        return torch.mm(x, W.T) if u is None else torch.addmm(u, x, W.T)


@dataclass(frozen=True)
class Bias(Term):
    """u += b (first among the constant terms: addmm folds it in)."""

    constant = True
    order = 0

    def add_const(self, u, W, boundary, dtype):
        return W.clone() if u is None else u.add_(W)


# ---- its G recipes (over the terms of a sum: nodes/rules.Products) ---------------------------------------------
@dataclass(frozen=True)
class RowsGrad(Grad):
    """-sum_k c_k a_own,k^T a_slot,k: the factor on the owner's own (post-synaptic) signal."""

    reads_inbox = True

    def value(self, p):
        return torch.mm(p.own().T, p.cat([sl[self.slot] for _, _, sl, _, _ in p.terms]))


@dataclass(frozen=True)
class ColsGrad(Grad):
    """-sum_k c_k a_slot,k^T a_own,k: the factor on the destination's (post-synaptic) signal, so that on one partition
    the owner and the replica compute the very same product."""

    reads_inbox = True

    def value(self, p):
        return torch.mm(p.cat([sl[self.slot] * c for c, _, sl, _, _ in p.terms]).T, p.cat([k[1] for k in p.terms]))


@dataclass(frozen=True)
class BiasGrad(Grad):
    """-sum_k c_k sum_batch a_own,k over the terms with a share in the bias (zero for synaptic terms only)."""

    def value(self, p):
        part = p.part()
        return p.own().new_zeros(p.own().shape[1]) if part is None else part.sum(0)


@dataclass(frozen=True)
class ClampedGrad(Grad):
    """-sum_k c_k a_own,k^T x: every term of a batch reads the same x, so the post side is summed first."""

    reads_x = True

    def value(self, p):
        part, own = p.part(), p.own()
        if part is None:  # synaptic terms only
            return own.new_zeros((own.shape[1], p.terms[0][3].shape[1]))
        B = p.terms[0][1].shape[0]
        post = part if len(p.full) == 1 else part.reshape(len(p.full), B, -1).sum(0)
        return torch.mm(post.T, p.full[0][3].to(own.dtype))


# ---- the interaction ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dense(WeightMatrix, Interaction):
    """E (or Phi) contains a(dst) . (W a(src) + b); W has shape (dst size, src size).

    symmetric: the source is driven by W^T a(dst) as well (both ends hold W: the destination its rows, the source
    a replica of its columns). mask: structural zeros, a tuple of dst-size tuples of 0/1 (None: dense); blocks
    with no non-zero entry between them are not neighbours through this interaction.
    """

    src: str
    dst: str
    W: str
    b: str | None = None
    symmetric: bool = True
    mask: tuple | None = None

    @property
    def reciprocal(self) -> bool:
        """A symmetric Dense drives its source by W^T a(dst) too: the gradient of one energy term."""
        return self.symmetric

    def add_drive(self, model, u: dict, params: dict, a: dict) -> None:
        """u[dst] += a_src W^T + b, and u[src] += a_dst W on a symmetric term between dynamic groups (whole groups,
        a: {group: its signal, x for the input})."""
        W = params[self.W]
        u[self.dst] = u[self.dst] + a[self.src] @ W.T + (params[self.b] if self.b else 0.0)
        if self.symmetric and model.group(self.src).role != "input":
            u[self.src] = u[self.src] + a[self.dst] @ W

    def add_jacobian(self, model, J, params: dict, da: dict, span: dict) -> None:
        """J[:, dst, src] += W diag(rho'_src) (and J[:, src, dst] += W^T diag(rho'_dst) when symmetric) for a dynamic
        source; J (B, n, n) over the dynamic units, span {group: (lo, hi)}, da {group: rho'(s_group)}."""
        if model.group(self.src).role == "input":
            return
        W = params[self.W]
        (r0, r1), (c0, c1) = span[self.dst], span[self.src]
        J[:, r0:r1, c0:c1] += W * da[self.src].unsqueeze(1)
        if self.symmetric:
            J[:, c0:c1, r0:r1] += W.T * da[self.dst].unsqueeze(1)

    def add_vjp(self, model, out: dict, params: dict, da: dict, d: dict) -> None:
        """out += J^T d of this term: out[src] += rho'_src * (d_dst W) (and out[dst] += rho'_dst * (d_src W^T) when
        symmetric) for a dynamic source."""
        if model.group(self.src).role == "input":
            return
        W = params[self.W]
        out[self.src] = out[self.src] + da[self.src] * (d[self.dst] @ W)
        if self.symmetric:
            out[self.dst] = out[self.dst] + da[self.dst] * (d[self.src] @ W.T)

    def share(self, model, b, need) -> tuple:
        """What block b holds of this term, the terms of its drive, its G recipes and the boundary keys it reads."""
        held, terms, grads, boundary = {}, [], {}, set()
        own = (b.lo, b.hi)
        src = model.group(self.src)
        if self.dst == b.group:  # this block owns W[rows, :] and b[rows]
            self.share_rows(model, b, need, held, terms, grads, boundary,
                            lambda slot, mask: (Fwd("fwd", self.W, slot), RowsGrad("rows", slot, mask)),
                            lambda mask: (Clamped("clamped", self.W, "x"), ClampedGrad("clamped", "x", mask)))
            if self.b:
                held[self.b] = Held(self.b, own, None, "primary")
                terms.append(Bias("bias", self.b))
                grads[self.b] = BiasGrad("bias")
        if self.symmetric and self.src == b.group and src.role != "input":  # replica of W[:, cols]
            self.share_columns(model, b, need, held, terms, grads, lambda local, slot, mask: Bwd("bwd", local, slot),
                               lambda slot, mask: ColsGrad("cols", slot, mask))
        return held, terms, grads, boundary

    def transposed_sends(self, model, by_group) -> list:
        """Kind "t" (nodes/interface.EXTRA_KINDS): [(sender, (dst node or "self", held W, lo, hi, rows))]: each
        destination block c sends each source block b it is connected to q @ W[c rows, b columns]; on a symmetric
        term b, which holds a replica of W's columns, sends c q @ W[c rows, b columns]^T as well. None from an input."""
        if model.group(self.src).role == "input":
            return []
        out = []
        for c in by_group.get(self.dst, ()):
            for b in by_group.get(self.src, ()):
                if connected(self.mask, (c.lo, c.hi), (b.lo, b.hi)):
                    out.append((c.node_id, ("self" if b.node_id == c.node_id else b.node_id, self.W, b.lo, b.hi,
                                            False)))
                    if self.symmetric:
                        out.append((b.node_id, ("self" if b.node_id == c.node_id else c.node_id,
                                                replica_name(self, b.group), c.lo, c.hi, True)))
        return out

    def backward_sends(self, model, by_group) -> list:
        """Kind "g": [(sender, (dst node, held W, lo, hi))]: on a directed term between dynamic groups each destination
        block c sends each other source block b it reads q @ W[c rows, b columns]."""
        if self.symmetric or model.group(self.src).role == "input":
            return []
        return [(c.node_id, (b.node_id, self.W, b.lo, b.hi)) for c in by_group.get(self.dst, ())
                for b in by_group.get(self.src, ())
                if b.node_id != c.node_id and connected(self.mask, (c.lo, c.hi), (b.lo, b.hi))]

