"""The bound-constrained optimiser's checks on functions where plain descent stops too early."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.fit.optimiser import minimise


@pytest.mark.parametrize("with_gradient", [True, False])
def test_zero_derivative_at_the_bound_is_left_inward(with_gradient):
    """f(x) = (x^2 - 1)^2 on x >= 0 from x = 0: the derivative there is exactly 0 (as for a
    diagonal element of T), so a gradient test alone would stop; the one-sided check restarts
    inward (lme4's restart_edge) and finds x = 1. Without a gradient, BOBYQA starts it."""

    def fg(x):
        return float((x[0] ** 2 - 1) ** 2), np.array([4 * x[0] * (x[0] ** 2 - 1)])

    opt = minimise(lambda x: fg(x)[0], [0.0], [0.0], grad=fg if with_gradient else None)
    assert opt.converged and (opt.restarts >= 1 or not with_gradient)
    assert abs(opt.x[0] - 1.0) < 1e-6 and opt.on_bound == ()


def test_mirror_image_at_the_bound_is_tried():
    """f(d, o) = (d^2 + o^2 - 1)^2 + 2 d o with d >= 0: at d = 0 the points (0, o) and (0, -o)
    are the same value, but only (0, -1) falls inward. Started at (0, 1), where plain descent
    stops, the check must take the mirror image and reach f < -0.9."""

    def f(x):
        d, o = x
        return float((d * d + o * o - 1) ** 2 + 2 * d * o)

    def fg(x):
        d, o = x
        s = d * d + o * o - 1
        return f(x), np.array([4 * s * d + 2 * o, 4 * s * o + 2 * d])

    lower = [0.0, -np.inf]
    plain = minimise(f, [0.0, 1.0], lower, grad=fg)  # no mirror: stuck on the bound
    assert plain.x[0] == 0.0 and plain.fun > -1e-9
    opt = minimise(f, [0.0, 1.0], lower, mirror=lambda x, i: x * np.array([1.0, -1.0]), grad=fg)
    assert opt.converged and opt.fun < -0.9 and opt.x[0] > 0.5 and opt.x[1] < -0.5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the run overflows on purpose
def test_not_converged_is_said():
    """A function unbounded below along a free coordinate is never called converged."""

    def fg(x):
        return float(-(x[0] ** 3)), np.array([-3 * x[0] ** 2])

    opt = minimise(lambda x: fg(x)[0], [1.0], [-np.inf], grad=fg)
    assert not opt.converged
