"""Shared check of the mixture's exact derivatives (test_mixture, test_bench_accuracy)."""

import numpy as np
import pytest


def assert_derivatives_exact(terms, x, steps, *, grad_rel, grad_abs=0.0, hess_rtol,
                             hess_atol):
    """``terms(x) -> (value, gradient, Hessian)``: the gradient equals the central differences
    of the value and the Hessian those of the gradient, with steps ``steps`` per coordinate;
    ``hess_atol`` is relative to the Hessian's largest entry.  Returns ``terms(x)``."""
    x = np.asarray(x, dtype=float)
    f, grad, hess = terms(x)
    for i, step in enumerate(steps):
        e = np.eye(len(x))[i] * step
        up, down = terms(x + e), terms(x - e)
        assert grad[i] == pytest.approx((up[0] - down[0]) / (2 * step), rel=grad_rel,
                                        abs=grad_abs)
        np.testing.assert_allclose(hess[i], (up[1] - down[1]) / (2 * step), rtol=hess_rtol,
                                   atol=hess_atol * np.max(np.abs(hess)))
    return f, grad, hess
