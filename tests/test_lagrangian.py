"""Two-point Lagrangian EP on the two-mass system (cluster/truth/lagrangian.py, docs/glep.md), float64, no Ray.

Tolerances from rounding: the Hessian M of the action has condition number ~ 400 / 4.5e-3 ~ 1e5, so a solve loses
~1e-11 relative; the symmetric "linear"-nudge estimate divides a difference of O(0.1) numbers by 2 beta, hence
~1e-11 / beta relative (measured 5e-12 at beta = 1e-2, 4e-10 at 1e-4): rel <= 1e-9 for beta >= 1e-2. Central
differences with step 1e-4: truncation O(step^2) ~ 1e-7 (measured 1.1e-7), rounding ~1e-11 / 1e-4 ~ 1e-7 at most.
"""
import torch

from cluster.truth import lagrangian as lg

TH = lg.params_tensor()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_free_two_point_solution_is_the_leapfrog_trajectory_and_a_saddle():
    x0 = lg.free_trajectory(TH)
    assert (x0 - lg.leapfrog(TH)[1:-1]).abs().max() < 1e-11        # measured 2e-13
    x = x0.clone().requires_grad_(True)
    assert torch.autograd.grad(lg.action(x, TH), x)[0].abs().max() < 1e-11
    neg, pos, smallest = lg.saddle_inertia(TH)
    assert neg == 1 and pos == 2 * (lg.T_STEPS - 1) - 1 and smallest > 1e-3   # indefinite, nonsingular


def test_assembled_system_and_dS_dtheta_are_the_gradients_of_the_stated_action():
    g = torch.Generator().manual_seed(0)
    x = (lg.free_trajectory(TH) + 0.05 * torch.randn(lg.T_STEPS - 1, 2, generator=g, dtype=lg.DTYPE)).requires_grad_(True)
    M, r = lg.system(TH)
    assert (torch.autograd.grad(lg.action(x, TH), x)[0].reshape(-1) - (M @ x.detach().reshape(-1) - r)).abs().max() < 1e-12
    th = TH.clone().requires_grad_(True)
    assert (torch.autograd.grad(lg.action(x.detach(), th), th)[0] - lg.dS_dtheta(x.detach())).abs().max() < 1e-14
    xx = x.detach().clone().requires_grad_(True)
    assert (torch.autograd.grad(lg.cost(xx), xx)[0] - lg.cost_grad(xx.detach())).abs().max() < 1e-15


def test_bptt_reference_matches_central_differences():
    g = lg.bptt_reference(TH)
    step, fd = 1e-4, torch.zeros(3, dtype=lg.DTYPE)
    for i in range(3):
        e = torch.zeros(3, dtype=lg.DTYPE)
        e[i] = step
        fd[i] = (lg.cost(lg.free_trajectory(TH + e)) - lg.cost(lg.free_trajectory(TH - e))) / (2 * step)
    assert rel(fd, g) < 1e-6                                         # measured 1.1e-7
    assert g.abs().min() > 1e-2                                      # all three components are non-trivial


def test_symmetric_estimate_with_linear_nudge_is_exact_for_any_beta():
    g = lg.bptt_reference(TH)
    for beta in (1e-2, 1e-1, 1.0, 10.0):
        assert rel(lg.ep_estimate(TH, beta, nudge="linear"), g) < 1e-9, beta


def test_one_sided_error_is_order_beta():
    g = lg.bptt_reference(TH)
    betas = (1e-4, 1e-3, 1e-2)
    for nudge in lg.NUDGES:
        errs = [rel(lg.ep_estimate_one_sided(TH, b, nudge=nudge), g) for b in betas]
        assert abs(lg.slope(betas, errs) - 1) < 0.2, (nudge, errs)
        assert errs[0] < 1e-3                                        # measured 5e-4: converges to the gradient
    # negative beta: same slope, opposite sign of the bias
    assert rel(lg.ep_estimate_one_sided(TH, -1e-3), g) < 1e-2


def test_symmetric_estimate_with_cost_nudge_has_order_beta_squared_error():
    g = lg.bptt_reference(TH)
    betas = (1e-3, 1e-2, 3e-2)
    errs = [rel(lg.ep_estimate(TH, b, nudge="cost"), g) for b in betas]
    assert abs(lg.slope(betas, errs) - 2) < 0.2, errs
    assert errs[0] < 1e-5                                            # measured 5.7e-6


def test_fixed_initial_state_needs_the_final_boundary_term():
    out = lg.ivp_boundary_check(TH, beta=1e-2)
    assert rel(out["naive"], out["truth"]) > 0.5                     # naive LEP with the IVP is not the gradient
    assert rel(out["corrected"], out["truth"]) < 1e-9                # the boundary term at the free end closes it


def test_costs_report():
    c = lg.costs()
    assert c["state_floats_per_trajectory"] == 2 * (lg.T_STEPS - 1) and c["stored_trajectory"]
    assert c["solves_symmetric"] == 2 and lg.costs(nudge="linear")["solves_symmetric"] == 3
    assert not c["jacobian_needed"]


def test_heb_echo_with_a_terminal_kick_is_exact_on_the_linear_system():
    for eps in (1e-1, 1e-3):
        est, truth = lg.heb_estimate(TH, eps)
        assert rel(est, truth) < 1e-9, eps                           # measured 5e-15 (eps 0.1), 1.4e-12 (1e-3)
