"""Local optimisers, elementwise, so a block of a tensor updates exactly as the whole tensor would.

sgd:  v <- momentum v + g;  theta <- theta - lr v        (momentum 0: theta <- theta - lr g)
adam: m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  theta <- theta - lr mhat / (sqrt(vhat) + eps)
"""
from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "adam")


class Optimizer:
    def __init__(self, name: str = "sgd", momentum: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {name!r}")
        self.name, self.momentum, self.betas, self.eps = name, float(momentum), betas, eps
        self.state = {}
        self.t = 0

    @torch.no_grad()
    def step(self, params: dict, grads: dict, lrs: dict) -> None:
        """Update params[k] in place from grads[k] with learning rate lrs[k]."""
        self.t += 1
        if self.name == "sgd":
            for k, g in grads.items():
                if self.momentum:
                    v = self.state.get(k)
                    v = g.clone() if v is None else v.mul_(self.momentum).add_(g)
                    self.state[k] = v
                    g = v
                params[k].sub_(lrs[k] * g)
        elif grads:  # adam: the same elementwise ops per tensor, all of a node's tensors in one call each
            b1, b2 = self.betas
            keys = list(grads)
            for k in keys:
                if k not in self.state:
                    self.state[k] = (torch.zeros_like(params[k]), torch.zeros_like(params[k]))
            ms, vs, gs = [self.state[k][0] for k in keys], [self.state[k][1] for k in keys], [grads[k] for k in keys]
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, gs, alpha=1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
            denom = torch._foreach_div(vs, 1 - b2 ** self.t)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_([params[k] for k in keys], ms, denom,
                                    [-lrs[k] / (1 - b1 ** self.t) for k in keys])

    def get_state(self) -> dict:
        """Flat {key: tensor} (plus the step count) for checkpoints."""
        flat = {"__t": torch.tensor(self.t)}
        for k, v in self.state.items():
            if isinstance(v, tuple):
                flat[f"{k}/m"], flat[f"{k}/v"] = v
            else:
                flat[f"{k}/m"] = v
        return flat

    def set_state(self, flat: dict) -> None:
        self.t = int(flat.get("__t", 0))
        self.state = {}
        for key, v in flat.items():
            if key == "__t":
                continue
            k, part = key.rsplit("/", 1)
            if self.name == "adam":
                m, vv = self.state.get(k, (None, None))
                self.state[k] = (v.clone(), vv) if part == "m" else (m, v.clone())
            else:
                self.state[k] = v.clone()
