"""The centralised reference of a Hamiltonian model (nodes/hamiltonian.py): the whole system's leapfrog in one
process, written from the declaration with full matrices (not from the nodes' rules), and its BPTT.

    simulate(model, params, x, y, T)   phi_half = phi + (h/2) pi;  pi += h F(phi_half, u_t);  phi = phi_half + (h/2) pi
                                       F = -dV/dphi of the whole system: the onsite parts with their drives d (each
                                       interaction's Interaction.add_drive, e.g. W u_t + b), then each interaction's
                                       own force (Interaction.add_force, e.g. a spring's); returns the loss L (batch
                                       mean, the conventions of nodes/hamiltonian.py) and, if asked, the states
    bptt_grad(...)                     dL/dtheta by autograd through those T steps (float64): the audit's truth
    central_difference(...)            (L(theta + d e) - L(theta - d e)) / (2 d) for one entry (tests)
    echo_state(...)                    forward, flip, unnudged echo: the state it returns to (echo_error)
"""
from __future__ import annotations

import torch

from nodes.potentials import ce_mean


class System:
    """The declaration flattened: dynamic units in group order, their groups' slices; the interactions give the
    drives and their own forces over whole groups."""

    def __init__(self, model):
        self.model, self.echo = model, model.echo
        self.h = float(model.dt)
        self.slices, at = {}, 0
        for g in model.dynamic_groups:
            self.slices[g.name] = slice(at, at + g.size)
            at += g.size
        self.n = at
        self.span = {name: (sl.start, sl.stop) for name, sl in self.slices.items()}
        self.inputs = {g.name for g in model.groups if g.role == "input"}
        self.out = self.slices[model.output_group.name]

    def _drives(self, params, x_t, phi) -> dict:
        """d per group: each interaction's part (e.g. W u_t from the input, W phi_src from a layer below, biases),
        from the signals {input: x_t (None: no input), dynamic group: its positions}."""
        a = {name: x_t for name in self.inputs}
        a.update({name: phi[:, sl] for name, sl in self.slices.items()})
        d = {}
        for it in self.model.interactions:
            it.add_drive(self.model, d, params, a)
        return d

    def force(self, phi, params, x_t):
        """-dV/dphi, (B, n): onsite -a phi + d or -a phi - c tanh(w phi + d), then the interactions' own forces (springs
        W (phi_src - phi_dst) both ways)."""
        parts = [None] * len(self.slices)
        drives = self._drives(params, x_t, phi)
        for k, (name, sl) in enumerate(self.slices.items()):
            p = {role: params[key] for role, key in self.echo.roles.get(name, {}).items()}
            f, d = phi[:, sl], drives.get(name)
            v = -p["a"] * f if "a" in p else torch.zeros_like(f)
            if self.echo.potential[name] == "quadratic":
                v = v + d if d is not None else v
            else:
                v = v - p["c"] * torch.tanh(p["w"] * f + (d if d is not None else 0.0))
            parts[k] = v
        F = torch.cat(parts, 1)
        for it in self.model.interactions:
            F = it.add_force(self.model, F, params, phi, self.span)
        return F

    def start(self, B, dtype):
        phi = torch.zeros(B, self.n, dtype=dtype)
        pi = torch.zeros(B, self.n, dtype=dtype)
        for name, sl in self.slices.items():
            if name in self.echo.start:
                phi0, pi0 = self.echo.start[name]
                phi[:, sl] = torch.tensor(phi0, dtype=dtype)
                pi[:, sl] = torch.tensor(pi0, dtype=dtype)
        return phi, pi

    def step(self, phi, pi, params, x_t):
        half = phi + (0.5 * self.h) * pi
        pi = pi + self.h * self.force(half, params, x_t)
        return half + (0.5 * self.h) * pi, pi


def _readout(model, params) -> dict:
    return {role: params[name] for role, name in model.echo.readout.items()}


def simulate(model, params, x, y, T: int, terminal: bool = False, record: bool = False, loss: bool = True):
    """(L, states or None): the forward pass's loss, batch mean (None without `loss`); states (T+1, B, 2, n) =
    (phi, pi) if `record`."""
    sys_ = System(model)
    B = x.shape[0]
    phi, pi = sys_.start(B, x.dtype)
    loss_name, h = model.echo.loss, sys_.h
    total = x.new_zeros(B)
    mean = None
    states = [torch.stack((phi, pi), 1)] if record else None
    for t in range(T):
        phi, pi = sys_.step(phi, pi, params, x[:, t] if x.shape[2] else None)
        if states is not None:
            states.append(torch.stack((phi, pi), 1))
        out = phi[:, sys_.out]
        if not loss:
            continue
        if loss_name == "ce-mean":
            mean = out if mean is None else mean + out
            continue
        if terminal and t != T - 1:
            continue
        w = 1.0 if terminal else h
        if loss_name == "sq":
            total = total + w * ((out - y[:, t]) ** 2).sum(1)
        elif loss_name == "sin-sum":
            total = total + w * torch.sin(out).sum(1) ** 2
        else:  # sin-readout
            total = total + w * torch.sin(out @ _readout(model, params)["c"][0]) ** 2
    if loss_name == "ce-mean" and loss:
        total = ce_mean(mean / T, y, _readout(model, params))[0]
    return (total.mean() if loss else None), (torch.stack(states) if states is not None else None)


def predict(model, params, x, y, T: int) -> tuple:
    """(loss per sample, logits) of a ce-mean model's forward pass in the centralised system (the BPTT baseline's
    evaluation)."""
    if model.echo.loss != "ce-mean":
        raise ValueError(f"loss: predict is for ce-mean models, not {model.echo.loss}")
    with torch.no_grad():
        _, states = simulate(model, params, x, None, T, record=True, loss=False)
        loss, logits, _, _ = ce_mean(states[1:, :, 0, System(model).out].mean(0), y, _readout(model, params))
    return loss, logits

def bptt_grad(model, params, x, y, T: int, terminal: bool = False) -> dict:
    """dL/dtheta for every parameter by autograd through the T leapfrog steps (float64)."""
    leaves = {k: v.detach().clone().double().requires_grad_(True) for k, v in params.items()}
    loss, _ = simulate(model, leaves, x.double(), None if y is None else y.double(), T, terminal)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    out = {k: (g if g is not None else torch.zeros_like(v)).detach() for (k, v), g in zip(leaves.items(), grads)}
    for it in model.interactions:  # a mask's structural zeros are no parameters: no gradient
        for name, mask in it.masks().items():
            out[name] = out[name] * mask.to(out[name].dtype)
    return out


def central_difference(model, params, x, y, T: int, name: str, index: tuple, step: float = 1e-6,
                       terminal: bool = False) -> float:
    """(L(theta + step e) - L(theta - step e)) / (2 step) for the entry `index` of parameter `name`."""
    vals = []
    for sign in (1.0, -1.0):
        p = {k: v.clone() for k, v in params.items()}
        p[name][index] += sign * step
        with torch.no_grad():
            vals.append(float(simulate(model, p, x, y, T, terminal)[0]))
    return (vals[0] - vals[1]) / (2 * step)


def echo_state(model, params, x, T: int) -> tuple:
    """(initial state, the state the unnudged echo returns to with its momenta flipped back), each (B, 2, n)."""
    sys_ = System(model)
    phi0, pi0 = sys_.start(x.shape[0], x.dtype)
    phi, pi = phi0, pi0
    with torch.no_grad():
        for t in range(T):
            phi, pi = sys_.step(phi, pi, params, x[:, t] if x.shape[2] else None)
        pi = -pi
        for t in range(T):
            phi, pi = sys_.step(phi, pi, params, x[:, T - 1 - t] if x.shape[2] else None)
    return torch.stack((phi0, pi0), 1), torch.stack((phi, -pi), 1)


def bptt_saved_bytes(model, params, x, y, T: int, terminal: bool = False) -> int:
    """Bytes of the tensors autograd keeps for BPTT through T steps (each tensor once): the stored trajectory."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t
    leaves = {k: v.detach().clone().double().requires_grad_(True) for k, v in params.items()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = simulate(model, leaves, x.double(), None if y is None else y.double(), T, terminal)
    del loss
    return int(sum(seen.values()))
