"""The centralised truths the audits compare a fabric's local estimates with: BPTT through the same discrete
dynamics, implicit differentiation at a stationary state, the non-conservative reference on vector fields, the
centralised leapfrog of a Hamiltonian model and its BPTT, and Lagrangian EP's two-point case. Each sees the whole
system at once; none is a runtime."""
