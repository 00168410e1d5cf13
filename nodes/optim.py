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
        for k, g in grads.items():
            p, lr = params[k], lrs[k]
            if self.name == "sgd":
                if self.momentum:
                    v = self.state.get(k)
                    v = g.clone() if v is None else v.mul_(self.momentum).add_(g)
                    self.state[k] = v
                    g = v
                p.sub_(lr * g)
            else:
                b1, b2 = self.betas
                m, v = self.state.get(k, (torch.zeros_like(p), torch.zeros_like(p)))
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                self.state[k] = (m, v)
                denom = (v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1 ** self.t))

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
