"""`heb`, Hamiltonian Echo Backpropagation (López-Pastor & Marquardt 2023; docs/glep.md): echo learning with a
terminal cost C(phi(T)) = ||phi_out(T) - y_T||^2 (loss sq; sin-sum and sin-readout likewise at the last step):

    forward   T steps from the initial state; the output node evaluates C at the end only
    echo      every node flips its own momenta; the output node kicks pi <- pi + c eps dC/dphi once, on entry; no
              other nudge; T steps with the input played backwards, every node accumulating h dH/dtheta at the
              half-steps, two copies side by side (c = +1, -1, or 0, +1 with `sided: one`)

and g_hat = -(G_+ - G_-) / (2 eps) as in `rhel` (protocols/rhel.py, whose phases and estimate it shares).
"""
from protocols.rhel import RHEL


class HEB(RHEL):
    name = "heb"
    terminal = True  # the cost reads the final state only: one kick, at the start of the echo


PROTOCOL = HEB()
