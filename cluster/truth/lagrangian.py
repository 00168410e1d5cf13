"""Lagrangian EP, two-point case (fixed initial and final positions), on the two-mass system (docs/algorithms.md §10.7, §13
T3; docs/glep.md). In-process, float64, audited against autograd through the solve (BPTT).

System: unit masses, V(phi) = 1/2 k1 phi1^2 + 1/2 k12 (phi2 - phi1)^2 + 1/2 k2 phi2^2 = 1/2 phi^T K(theta) phi,
theta = (k1, k12, k2), K = [[k1 + k12, -k12], [-k12, k2 + k12]]. Time grid t_n = n h, n = 0 .. T.
Discrete action (kinetic term by forward differences, potential by the trapezoid rule):
    S(phi_0 .. phi_T) = sum_{n=0}^{T-1} h [ 1/2 |(phi_{n+1} - phi_n)/h|^2 - 1/2 (V(phi_n) + V(phi_{n+1})) ].
phi_0, phi_T are fixed data; the state is the interior x = (phi_1 .. phi_{T-1}), shape (T-1, 2). For 0 < n < T
    dS/dphi_n = -(phi_{n+1} - 2 phi_n + phi_{n-1}) / h - h K phi_n,
so dS/dx = M x - r with M = (1/h) tridiag(-1, 2, -1) (x) I_2 - h I (x) K (the Hessian of S) and r = (phi_0/h at n = 1,
phi_T/h at n = T-1). dS/dx = 0 is the Stormer-Verlet recursion: the free two-point solution through leapfrog
boundary positions is that leapfrog trajectory. M is indefinite once T h exceeds pi/omega_max (1.96 here): the
free trajectory is a saddle of S, and EP's "relaxation" is solving for the stationary point, not minimising.
Cost on the interior, target phi3(t) = 0.5 sin 3t:  L(x) = h sum_{n=1}^{T-1} (phi_{2,n} - phi3(t_n))^2.
EP (any stationary point, M nonsingular): with x^beta stationary for F = S + beta N and N's gradient equal to
dL/dx at beta = 0,  dL/dtheta = d/dbeta dS/dtheta(x^beta) |_0  (sign +; derivation in docs/glep.md). Nudges N:
    "cost":    N = L(x)                   (M + 2h beta P) x = r + 2h beta P y  EP proper; symmetric error O(beta^2)
    "linear":  N = g^T x, g = dL/dx(x^0)  M x = r - beta g                     x^beta affine in beta; dS/dtheta is
               quadratic in x, so the symmetric estimate is exact for every beta (one-sided error exactly ~ beta).
Two checks of docs/glep.md's other cases: `ivp_boundary_check` (case (a), fixed initial state: EP needs the final-time
boundary term) and `heb_estimate` (case (c), HEB's echo with one terminal kick).
"""
from __future__ import annotations

import math

import torch

DTYPE = torch.float64
PARAM_NAMES = ("k1", "k12", "k2")
PARAMS0 = (1.0, 0.7, 1.3)
T_STEPS, H = 250, 1e-2            # horizon 2.5 > pi/omega_max = 1.96: the action is a saddle (one negative mode)
PHI_INIT, PI_INIT = (0.3, -0.2), (0.0, 0.1)   # §13 T3's initial state; the boundary positions come from it
NUDGES = ("cost", "linear")


def params_tensor(k1=PARAMS0[0], k12=PARAMS0[1], k2=PARAMS0[2]):
    return torch.tensor([k1, k12, k2], dtype=DTYPE)


def stiffness(theta):
    """K(theta), V = 1/2 phi^T K phi."""
    k1, k12, k2 = theta
    return torch.stack([torch.stack([k1 + k12, -k12]), torch.stack([-k12, k2 + k12])])


def target(T=T_STEPS, h=H):
    """phi3(t_n) = 0.5 sin(3 n h), n = 0 .. T."""
    return 0.5 * torch.sin(3.0 * h * torch.arange(T + 1, dtype=DTYPE))


def leapfrog(theta, T=T_STEPS, h=H, phi=PHI_INIT, pi=PI_INIT):
    """Velocity-Verlet positions phi_0 .. phi_T: phi_1 = phi_0 + h pi_0 - h^2/2 K phi_0,
    phi_{n+1} = 2 phi_n - phi_{n-1} - h^2 K phi_n (the discrete Euler-Lagrange equations of S)."""
    K = stiffness(theta)
    p0, q0 = torch.as_tensor(phi, dtype=DTYPE), torch.as_tensor(pi, dtype=DTYPE)
    out = [p0, p0 + h * q0 - 0.5 * h * h * (K @ p0)]
    for _ in range(T - 1):
        out.append(2 * out[-1] - out[-2] - h * h * (K @ out[-1]))
    return torch.stack(out)


def boundary(T=T_STEPS, h=H):
    """Fixed data (phi_0, phi_T): the ends of the leapfrog run of T3's initial state at PARAMS0 (not a function of
    the trained theta)."""
    traj = leapfrog(params_tensor(), T, h)
    return traj[0].clone(), traj[-1].clone()


def _full(x, bounds):
    return torch.cat([bounds[0][None], x, bounds[1][None]])


def action(x, theta, bounds=None, h=H):
    """S(phi_0 .. phi_T) of the module docstring, interior x of shape (T-1, 2)."""
    phi = _full(x, bounds or boundary(x.shape[0] + 1, h))
    V = 0.5 * torch.einsum("ni,ij,nj->n", phi, stiffness(theta), phi)
    kin = 0.5 * ((phi[1:] - phi[:-1]) / h).pow(2).sum(1)
    return (h * (kin - 0.5 * (V[1:] + V[:-1]))).sum()


def dS_dtheta(x, bounds=None, h=H):
    """dS/dtheta = -sum_n w_n dV/dtheta(phi_n), trapezoid weights w = h (interior), h/2 (ends);
    dV/dk1 = phi1^2/2, dV/dk12 = (phi2 - phi1)^2/2, dV/dk2 = phi2^2/2: local to each spring, summed over time."""
    phi = _full(x, bounds or boundary(x.shape[0] + 1, h))
    w = torch.full((phi.shape[0],), h, dtype=DTYPE)
    w[0] = w[-1] = h / 2
    dV = 0.5 * torch.stack([phi[:, 0] ** 2, (phi[:, 1] - phi[:, 0]) ** 2, phi[:, 1] ** 2], 1)
    return -(w[:, None] * dV).sum(0)


def system(theta, T=T_STEPS, h=H, bounds=None):
    """(M, r) with dS/dx = M x - r on the flattened interior (2(T-1) unknowns); M is the Hessian of S."""
    a, b = bounds or boundary(T, h)
    n = T - 1
    lap = 2 * torch.eye(n, dtype=DTYPE) - torch.diag(torch.ones(n - 1, dtype=DTYPE), 1) \
        - torch.diag(torch.ones(n - 1, dtype=DTYPE), -1)
    M = torch.kron(lap, torch.eye(2, dtype=DTYPE)) / h - h * torch.kron(torch.eye(n, dtype=DTYPE), stiffness(theta))
    r = torch.zeros(2 * n, dtype=DTYPE)
    r[:2], r[-2:] = a / h, b / h
    return M, r


def cost(x, h=H):
    """L(x) = h sum_{n=1}^{T-1} (x_{n,2} - phi3(t_n))^2."""
    return h * (x[:, 1] - target(x.shape[0] + 1, h)[1:-1]).pow(2).sum()


def cost_grad(x, h=H):
    """dL/dx: 2h (x_{n,2} - phi3(t_n)) on the second mass, 0 on the first."""
    g = torch.zeros_like(x)
    g[:, 1] = 2 * h * (x[:, 1] - target(x.shape[0] + 1, h)[1:-1])
    return g


def free_trajectory(theta, T=T_STEPS, h=H, bounds=None):
    """Stationary point of S: M x = r (exact dense solve). Returns x, shape (T-1, 2)."""
    M, r = system(theta, T, h, bounds)
    return torch.linalg.solve(M, r).reshape(T - 1, 2)


def nudged_trajectory(theta, beta, T=T_STEPS, h=H, bounds=None, nudge="cost", free=None):
    """Stationary point of S + beta N:  "cost": (M + beta d^2L/dx^2) x = r + beta 2h P y;  "linear": M x = r - beta g,
    g = dL/dx at the free trajectory (`free`, solved here if not given)."""
    M, r = system(theta, T, h, bounds)
    if nudge == "cost":
        d = torch.zeros(T - 1, 2, dtype=DTYPE)
        d[:, 1] = 2 * h
        y = torch.zeros(T - 1, 2, dtype=DTYPE)
        y[:, 1] = target(T, h)[1:-1]
        return torch.linalg.solve(M + beta * torch.diag(d.reshape(-1)), r + beta * (d * y).reshape(-1)).reshape(T - 1, 2)
    if nudge == "linear":
        x0 = free_trajectory(theta, T, h, bounds) if free is None else free
        return torch.linalg.solve(M, r - beta * cost_grad(x0, h).reshape(-1)).reshape(T - 1, 2)
    raise ValueError(f"nudge must be one of {NUDGES}, got {nudge!r}")


def ep_estimate(theta, beta, T=T_STEPS, h=H, bounds=None, nudge="cost"):
    """Symmetric EP: g = (dS/dtheta(x^{+beta}) - dS/dtheta(x^{-beta})) / (2 beta) ~ dL/dtheta (k1, k12, k2)."""
    bounds = bounds or boundary(T, h)
    free = free_trajectory(theta, T, h, bounds) if nudge == "linear" else None
    xp, xm = (nudged_trajectory(theta, s * beta, T, h, bounds, nudge, free) for s in (1, -1))
    return (dS_dtheta(xp, bounds, h) - dS_dtheta(xm, bounds, h)) / (2 * beta)


def ep_estimate_one_sided(theta, beta, T=T_STEPS, h=H, bounds=None, nudge="cost"):
    """One-sided EP: g = (dS/dtheta(x^beta) - dS/dtheta(x^0)) / beta; bias O(beta)."""
    bounds = bounds or boundary(T, h)
    free = free_trajectory(theta, T, h, bounds)
    xb = nudged_trajectory(theta, beta, T, h, bounds, nudge, free)
    return (dS_dtheta(xb, bounds, h) - dS_dtheta(free, bounds, h)) / beta


def bptt_reference(theta, T=T_STEPS, h=H, bounds=None):
    """Ground truth dL/dtheta of L(x^0(theta)), autograd through the solve of M(theta) x = r (boundaries fixed)."""
    th = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cost(free_trajectory(th, T, h, bounds), h), th)
    return g


def saddle_inertia(theta, T=T_STEPS, h=H):
    """(negative, positive) eigenvalue counts of the Hessian M of S at the free trajectory, and min |eigenvalue|."""
    ev = torch.linalg.eigvalsh(system(theta, T, h)[0])
    return int((ev < 0).sum()), int((ev > 0).sum()), float(ev.abs().min())


def costs(T=T_STEPS, n=2, nudge="cost"):
    """Resources of the two-point LEP estimate for an n-dimensional system over T steps."""
    return {
        "solves_symmetric": 2 if nudge == "cost" else 3,   # "linear" needs the free solve for g = dL/dx(x^0)
        "solves_one_sided": 2,
        "state_floats_per_trajectory": n * (T - 1),        # the state is the whole interior trajectory: O(T)
        "memory_in_T": "O(T) (the state; a banded solve keeps it O(T), the dense one here is O(T^2))",
        "jacobian_needed": False,                          # not if the space-time relaxation is available;
        "jacobian_if_shooting": f"{n}x{n} (d phi_T / d pi_0) per Newton step",
        "stored_trajectory": True,                         # the whole trajectory is relaxed at once (not causal)
        "local": "in space (dS/dk12 needs phi1, phi2) and time (nearest-neighbour coupling of the relaxation)",
        "needs_final_position": True,
    }


def ivp_boundary_check(theta, beta=1e-2, T=T_STEPS, h=H):
    """Case (a), fixed initial state (phi_0, phi_1): the nudged trajectory from the same initial state with the linear
    nudge, phi_{n+1} = 2phi_n - phi_{n-1} - h^2 K phi_n + h beta g_n, n = 1 .. T-1. Then
        dL/dtheta = d/dbeta dS/dtheta(phi^beta) + d_beta p_T . d_theta phi_T - d_theta p_T . d_beta phi_T,
    p_T = dS/dphi_T = (phi_T - phi_{T-1})/h - h/2 K phi_T (the final momentum): the boundary term at the free end.
    Returns truth (autograd), naive EP, the correction (needs the 2x3 parameter Jacobians of phi_T and p_T)."""
    def traj(th, b=0.0, g=None):
        K = stiffness(th)
        p0 = torch.as_tensor(PHI_INIT, dtype=DTYPE)
        out = [p0, p0 + h * torch.as_tensor(PI_INIT, dtype=DTYPE) - 0.5 * h * h * (K @ p0)]
        for n in range(1, T):
            nxt = 2 * out[-1] - out[-2] - h * h * (K @ out[-1])
            out.append(nxt if g is None else nxt + h * b * g[n - 1])
        return torch.stack(out)

    def p_T(phi, th):
        return (phi[-1] - phi[-2]) / h - 0.5 * h * (stiffness(th) @ phi[-1])

    th = theta.detach().clone().requires_grad_(True)
    truth = torch.autograd.grad(cost(traj(th)[1:-1], h), th)[0]
    g = cost_grad(traj(theta)[1:-1], h)
    ends = (lambda phi: (phi[0], phi[-1]))
    tp, tm = traj(theta, beta, g), traj(theta, -beta, g)
    naive = (dS_dtheta(tp[1:-1], ends(tp), h) - dS_dtheta(tm[1:-1], ends(tm), h)) / (2 * beta)
    dphi_b = (tp[-1] - tm[-1]) / (2 * beta)                     # exact: the trajectory is affine in beta
    dp_b = (p_T(tp, theta) - p_T(tm, theta)) / (2 * beta)
    J_phi = torch.autograd.functional.jacobian(lambda t: traj(t)[-1], theta)     # (2, 3)
    J_p = torch.autograd.functional.jacobian(lambda t: p_T(traj(t), t), theta)
    correction = dp_b @ J_phi - dphi_b @ J_p
    return {"truth": truth, "naive": naive, "correction": correction, "corrected": naive + correction}



def _verlet(theta, y, z, steps, h, collect=False):
    """Position Verlet: y_half = y + h/2 z; z <- z - h K y_half; y <- y_half + h/2 z. Collects
    G = sum h dV/dtheta(y_half) when asked (the half-step positions, docs/algorithms.md §10.3)."""
    K, G = stiffness(theta), torch.zeros(3, dtype=DTYPE)
    for _ in range(steps):
        yh = y + 0.5 * h * z
        z = z - h * (K @ yh)
        y = yh + 0.5 * h * z
        if collect:
            G = G + 0.5 * h * torch.stack([yh[0] ** 2, (yh[1] - yh[0]) ** 2, yh[1] ** 2])
    return y, z, G


def heb_cost(y, goal=0.2):
    """Terminal cost of the HEB check: C(phi(T)) = 1/2 (phi_2(T) - goal)^2."""
    return 0.5 * (y[1] - goal) ** 2


def heb_estimate(theta, eps, steps=300, h=H):
    """HEB (case (c), terminal cost): forward from T3's initial state; flip pi; kick pi <- pi + eps g, g = dC/dphi(T);
    echo for the same time with no other nudge; g_hat = -(G(+eps) - G(-eps)) / (2 eps). Returns (g_hat, truth)."""
    y0, z0 = torch.tensor(PHI_INIT, dtype=DTYPE), torch.tensor(PI_INIT, dtype=DTYPE)
    th = theta.detach().clone().requires_grad_(True)
    yT, zT, _ = _verlet(th, y0, z0, steps, h)
    truth = torch.autograd.grad(heb_cost(yT), th)[0]
    yT, zT = yT.detach().requires_grad_(True), zT.detach()
    g = torch.autograd.grad(heb_cost(yT), yT)[0]
    G = [_verlet(theta, yT.detach(), -zT + s * eps * g, steps, h, collect=True)[2] for s in (1, -1)]
    return -(G[0] - G[1]) / (2 * eps), truth

def slope(betas, errors):
    """Least-squares slope of log(error) against log(beta)."""
    lx = torch.tensor([math.log(b) for b in betas], dtype=DTYPE)
    ly = torch.tensor([math.log(e) for e in errors], dtype=DTYPE)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())
