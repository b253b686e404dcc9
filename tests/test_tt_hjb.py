"""Engine 2: TT-cross and the HJB time integration against closed forms and quadrature."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb.diffusion import gaussian_ou_marginal
from numpyro_hjb.tt import core as C
from numpyro_hjb.tt import cross, hjb
from numpyro_hjb.tt.settings import Adaptivity, Integration

#: the integration settings these tests are written for (tighter than the engine's defaults)
INTEGRATION = Integration(step_tol=1e-6, init_step=1e-3, min_step=1e-9)
ADAPTIVITY = Adaptivity(max_rank=32, degree_tol=1e-7, max_degree=40)


def _integrate(w0, times, cutoff=0.0, **options):
    """hjb.integrate with INTEGRATION / ADAPTIVITY updated by ``options`` (by name)."""

    def pick(base):
        names = [k for k in options if k in base.option_names()]
        return dataclasses.replace(base, **{k: options.pop(k) for k in names})

    integration, adaptivity = pick(INTEGRATION), pick(ADAPTIVITY)
    assert not options, f"not integration settings: {options}"
    return hjb.integrate(w0, times, integration, adaptivity, cutoff=cutoff)


def test_maxvol_bounded_coefficients():
    a = np.random.default_rng(0).normal(size=(40, 5))
    rows = cross.maxvol(a, tol=1.01)
    coef = a @ np.linalg.inv(a[rows])
    assert np.abs(coef).max() <= 1.01 + 1e-10
    assert len(set(rows.tolist())) == 5


def test_cross_recovers_sum_of_univariate_functions():
    d = 6

    def f(x):
        return np.sum((x**2 - 2.0) ** 2, axis=1) - 0.5 * np.sum(x**2, axis=1)

    res = cross.cross_potential(f, d, 4, rank=4)
    assert max(C.ranks(res.tt)) == 2
    assert res.holdout_error < 1e-12


def test_cross_quadratic_form_and_holdout():
    rng = np.random.default_rng(1)
    d = 4
    a = rng.normal(size=(d, d))
    p = a @ a.T / d + 0.3 * np.eye(d)
    m = rng.normal(size=d)

    def f(x):
        return 0.5 * np.einsum("ni,ij,nj->n", x - m, p, x - m)

    res = cross.cross_potential(f, d, 2, rank=4)
    assert res.holdout_error < 1e-12
    assert max(C.ranks(res.tt)) <= 4


def _gaussian_problem(d, seed=1, log_z=0.7):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = q @ np.diag(np.geomspace(0.1, 10.0, d)) @ q.T  # condition number 100
    m = rng.normal(size=d)
    prec = np.linalg.inv(s)
    half_logdet = 0.5 * np.linalg.slogdet(2 * np.pi * s)[1]

    def w0(x):  # U - |x|^2/2 with U = -log rho, rho = Z N(m, S)
        u = 0.5 * np.einsum("ni,ij,nj->n", x - m, prec, x - m) + half_logdet - log_z
        return u - 0.5 * np.sum(x**2, axis=1)

    def w_exact(x, t):
        mt, st = (np.asarray(a) for a in gaussian_ou_marginal(jnp.asarray(m), jnp.asarray(s), t))
        pt = np.linalg.inv(st)
        logp = -0.5 * np.einsum("ni,ij,nj->n", x - mt, pt, x - mt) - 0.5 * np.linalg.slogdet(
            2 * np.pi * st
        )[1]
        return -logp - log_z - 0.5 * np.sum(x**2, axis=1), -(x - mt) @ pt

    return w0, w_exact, log_z


def test_gaussian_closed_form_scores_and_log_z():
    d = 3
    w0, w_exact, log_z = _gaussian_problem(d)
    res = cross.cross_potential(w0, d, 2, rank=4)
    times = [0.0, 0.1, 0.5, 2.0]
    out = _integrate(res.tt, times, step_tol=1e-5, round_tol=1e-12, stop_tol=1e-7)
    x = np.random.default_rng(2).normal(size=(200, d))
    with jax.enable_x64(True):
        for w_t, t in zip(out.snapshots, out.snapshot_times):
            v, g, _ = C.value_grad_lap(w_t.cores, jnp.asarray(x))
            w_ex, score_ex = w_exact(x, t)
            np.testing.assert_allclose(np.asarray(v), w_ex, atol=1e-4)
            np.testing.assert_allclose(-x - np.asarray(g), score_ex, atol=1e-4)
    readoff, resid = hjb.log_z_readoff(out.final)
    assert readoff == pytest.approx(log_z, abs=2e-5)
    assert resid < 1e-6
    # ranks stay small: the quadratic W_t has TT ranks <= 3
    assert max(out.history["max_rank"]) <= 4


def test_heun_is_second_order_and_euler_first_order():
    d = 2
    w0, w_exact, _ = _gaussian_problem(d, seed=3)
    w = cross.cross_potential(w0, d, 2, rank=4).tt
    w = C.pad_degrees(w, 4)
    t_end = 0.1
    x = np.random.default_rng(4).normal(size=(100, d))
    errs = {"euler": [], "heun": []}
    for n in (20, 40):
        tau = t_end / n
        we = wh = w
        for _ in range(n):
            we = hjb.lawson_euler_step(we, tau, 1e-13, None)
            wh = hjb.lawson_heun_step(wh, tau, 1e-13, None)[0]
        ex = w_exact(x, t_end)[0]
        errs["euler"].append(np.abs(C.value(we.cores, x) - ex).max())
        errs["heun"].append(np.abs(C.value(wh.cores, x) - ex).max())
    assert errs["euler"][0] / errs["euler"][1] == pytest.approx(2.0, rel=0.25)
    assert errs["heun"][0] / errs["heun"][1] == pytest.approx(4.0, rel=0.25)


def test_cole_hopf_identity_along_the_flow():
    """Z = (2 pi)^{d/2} E_gamma[e^{-W_t}] for every t (tensor Gauss-Hermite quadrature)."""
    d = 2
    w0, _, log_z = _gaussian_problem(d, seed=5, log_z=-0.3)
    res = cross.cross_potential(w0, d, 2, rank=4)
    out = _integrate(res.tt, [0.0, 0.05, 0.3, 1.0], t_max=1.0, step_tol=1e-5, round_tol=1e-12)
    from numpyro_hjb.tt.basis import gauss_hermite

    x, w = gauss_hermite(60)
    grid = np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2)
    wts = np.outer(w, w).ravel()
    for w_t in out.snapshots:
        vals = C.value(w_t.cores, grid)
        m = np.min(vals)
        est = 0.5 * d * math.log(2 * math.pi) - m + math.log(np.sum(wts * np.exp(-(vals - m))))
        assert est == pytest.approx(log_z, abs=5e-5)


def _ou_log_density_1d(log_rho, t, x):
    """log(Z p_t(x)) by quadrature of the OU convolution of rho."""
    y = np.linspace(-9, 9, 12001)
    dy = y[1] - y[0]
    a = math.exp(-t)
    v = 1 - a**2
    k = -((x[:, None] - a * y[None]) ** 2) / (2 * v) - 0.5 * math.log(2 * math.pi * v)
    z = k + log_rho(y)[None]
    mx = z.max(1, keepdims=True)
    return (mx + np.log(np.sum(np.exp(z - mx), 1, keepdims=True) * dy))[:, 0]


@pytest.mark.parametrize("integrator", ["heun", "dlra"])
def test_double_well_1d_against_quadrature(integrator):
    """Non-Gaussian 1-D target rho = exp(-(x^2-1)^2): W_t vs quadrature of the OU evolution
    (integrated with the far-field cutoff R = 4; degree 32)."""

    def log_rho(x):
        return -((x**2 - 1.0) ** 2)

    w0 = cross.cross_potential(lambda x: -log_rho(x[:, 0]) - 0.5 * x[:, 0] ** 2, 1, 32).tt
    times = [0.0, 0.2, 1.0, 3.0]
    out = _integrate(
        w0, times, t_max=6.0, step_tol=1e-6, max_degree=32, init_step=1e-4, cutoff=4.0,
        integrator=integrator,
    )
    x = np.linspace(-2.0, 2.0, 21)
    tol = {0.2: 0.06, 1.0: 0.01, 3.0: 2e-3}
    for w_t, t in zip(out.snapshots[1:], out.snapshot_times[1:]):
        exact = -_ou_log_density_1d(log_rho, t, x) - 0.5 * x**2
        assert np.abs(C.value(w_t.cores, x[:, None]) - exact).max() < tol[float(t)]
    y = np.linspace(-9, 9, 12001)
    log_z = math.log(np.sum(np.exp(log_rho(y))) * (y[1] - y[0]))
    assert hjb.log_z_readoff(out.final)[0] == pytest.approx(log_z, abs=2e-3)


def test_blow_up_raises_runtime_error():
    """Without the cutoff the Galerkin HJB blows up for a non-polynomial W_0: a clear error."""

    def w0(x):
        z = x[:, 0]
        return -np.logaddexp(-((z - 1) ** 2), -((z + 1) ** 2)) - 0.5 * z**2

    w = cross.cross_potential(w0, 1, 16).tt
    with pytest.raises(RuntimeError, match="TT-HJB"):
        _integrate(w, [0.5], step_tol=1e-6, max_degree=16, min_step=1e-7, max_steps=3000)
