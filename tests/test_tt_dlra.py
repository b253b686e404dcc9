"""Engine 2, second integrator: projector-splitting DLRA on the fixed-rank TT manifold."""

import numpy as np
import pytest
from test_tt_hjb import _gaussian_problem, _integrate

from numpyro_hjb.tt import core as C
from numpyro_hjb.tt import cross, dlra, hjb


def _random_tt(rng, degs, ranks):
    return C.TT(
        tuple(rng.normal(size=(ranks[k], degs[k] + 1, ranks[k + 1])) for k in range(len(degs)))
    )


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_sweep_is_exact_when_the_line_stays_on_the_manifold(k):
    """Lubich-Oseledets-Vandereycken exactness: F constant and Y + sF of the ranks of Y
    (F differs from Y in core k only) -> the sweep returns Y + tau F."""
    rng = np.random.default_rng(0)
    y = _random_tt(rng, [3, 4, 3, 5], [1, 2, 3, 2, 1])
    cores = list(C._np_cores(y))
    cores[k] = rng.normal(size=cores[k].shape)
    f = C.TT(tuple(cores))
    tau = 0.3
    exact = C.add(y, C.scale(f, tau))
    for sweep in (dlra.ksl_sweep, dlra.symmetric_ksl):
        out = sweep(y, tau, lambda core, j, d: f.cores[j])
        assert C.ranks(out) == C.ranks(y)
        assert C.norm(C.sub(out, exact)) < 1e-12 * C.norm(exact)


def test_padded_ranks_keep_the_function():
    rng = np.random.default_rng(1)
    y = _random_tt(rng, [2, 3, 2], [1, 1, 2, 1])
    z = dlra.pad_to_ranks(y, 5)
    assert C.ranks(z) == (1, 3, 3, 1)  # capped at the largest feasible ranks (3 x 4 x 3)
    assert C.norm(C.sub(z, y)) < 1e-14


def test_dlra_step_is_second_order_with_padded_ranks():
    """Fixed steps on a Gaussian W_0 (the exact W_t is a quadratic form, rank 3 in d = 3), on
    a manifold padded to rank 5 (zero singular values, which the projector splitting must
    survive): errors at t = 0.1 fall by 4 when the step halves."""
    d = 3
    w0, w_exact, _ = _gaussian_problem(d)
    w = C.pad_degrees(cross.cross_potential(w0, d, 2, rank=4).tt, 4)
    w = dlra.pad_to_ranks(w, 5)
    x = np.random.default_rng(4).normal(size=(100, d))
    errs = []
    for n in (20, 40):
        y = w
        for _ in range(n):
            y = dlra.dlra_step(y, 0.1 / n)
        assert C.ranks(y) == C.ranks(w)
        errs.append(np.abs(C.value(y.cores, x) - w_exact(x, 0.1)[0]).max())
    assert errs[1] < 2e-3
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.25)


def test_dlra_integration_matches_the_gaussian_closed_form():
    d = 3
    w0, w_exact, log_z = _gaussian_problem(d)
    w = cross.cross_potential(w0, d, 2, rank=4).tt
    times = [0.1, 0.5, 2.0]
    out = _integrate(w, times, integrator="dlra", step_tol=1e-6, stop_tol=1e-7)
    x = np.random.default_rng(2).normal(size=(200, d))
    for w_t, t in zip(out.snapshots, out.snapshot_times):
        assert C.ranks(w_t) == C.ranks(C.round_tt(w, 1e-11))
        assert np.abs(C.value(w_t.cores, x) - w_exact(x, t)[0]).max() < 2e-4
    assert hjb.log_z_readoff(out.final)[0] == pytest.approx(log_z, abs=2e-4)
