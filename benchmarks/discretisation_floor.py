"""The discretisation floor: ESS and log Z of the diffusion sampler driven by the *exact* score.

For targets whose OU marginals p_t are known, the control u = grad log p_t + y is the
continuous-time optimum; with K steps the path weights still vary through the time
discretisation alone. That ESS bounds what a trained network can reach with the same grid,
and so says whether more training or more steps is what a target needs.

* gmm9: p_t is the mixture of N(e^{-t} m_i, (e^{-2t} 0.3 + 1 - e^{-2t}) I), exactly.
* manywell (product of 1-D double wells): the 1-D score of p_t by quadrature on a fine grid.
* funnel: given x1 every coordinate of X_t is Gaussian (y1 ~ N(a x1, s^2), y_i ~ N(0,
  a^2 e^{x1} + s^2)), so p_t is a 1-D integral over x1, done by quadrature.

PIS (Brownian reference sigma B_s from 0 over [0, T]) has the optimal control
u = grad log h_t, h_t = f * N(0, sigma^2 t) with f = rho / N(0, sigma^2 T); for the many-well
product it is the 1-D posterior mean of the convolution, by the same quadrature
(:func:`manywell_pis_control`, rows "pis" of the manywell tables). manywell50 adds 45 N(0, 1)
coordinates, whose scores and PIS controls are linear.

Run: ``python -m benchmarks.discretisation_floor [gmm9|manywell5|manywell50|funnel10]``.
"""

from __future__ import annotations

import sys
from functools import partial

import jax
import jax.numpy as jnp

from numpyro_hjb.diffusion import (
    brownian_scheme,
    control_from_score,
    ou_scheme,
    simulate_log_weights,
)
from numpyro_hjb.evidence import estimate_evidence
from .targets import get_target


def gmm9_score(t_scale: float = 0.3):
    centres = jnp.array([[a, b] for a in (-5.0, 0.0, 5.0) for b in (-5.0, 0.0, 5.0)])

    def log_pt(x, t):
        a = jnp.exp(-t)
        v = a**2 * t_scale + 1.0 - a**2
        sq = jnp.sum((x - a * centres) ** 2, -1)
        return jax.scipy.special.logsumexp(-0.5 * sq / v) - jnp.log(2 * jnp.pi * v)

    return jax.vmap(jax.grad(log_pt), (0, None))


def _posterior_mean_1d(xs, log_prior, y, a, v):
    """E[X | Y = y] per entry of y, for X with log density log_prior on the grid xs and
    Y | X ~ N(a X, v), by quadrature: the 1-D core of the many-well controls."""
    flat = y.reshape(-1)
    logits = log_prior[None, :] - 0.5 * (flat[:, None] - a * xs[None, :]) ** 2 / v
    return jnp.sum(jax.nn.softmax(logits, axis=1) * xs[None, :], 1).reshape(y.shape)


def _well_score(y, delta):
    """grad log of one well, exp(-(y^2 - delta)^2)."""
    return -4.0 * y * (y**2 - delta)


def manywell_score(delta: float, grid: int = 2001, half_width: float = 4.0):
    xs = jnp.linspace(-half_width, half_width, grid)
    log_rho_1d = -((xs**2 - delta) ** 2)

    def score(y, t):
        a = jnp.exp(-t)
        v = jnp.maximum(1.0 - a**2, 1e-12)
        s_quad = (a * _posterior_mean_1d(xs, log_rho_1d, y, a, v) - y) / v
        # the target score itself where the quadrature can't resolve the kernel
        return jnp.where(t < 1e-3, _well_score(y, delta), s_quad)

    return score


def manywell_pis_control(delta: float, sigma: float = 2.0, horizon: float = 1.0,
                         grid: int = 2001, half_width: float = 4.0):
    """PIS optimal control of the many-well product: u = (E[Z | y] - y) / (sigma^2 t) with
    Z | y proportional to f(z) N(z; y, sigma^2 t), per coordinate by quadrature; grad log f
    itself below t = 1e-4."""
    xs = jnp.linspace(-half_width, half_width, grid)
    var_end = sigma**2 * horizon
    log_f = -((xs**2 - delta) ** 2) + 0.5 * xs**2 / var_end

    def control(y, t):
        v = jnp.maximum(sigma**2 * t, 1e-12)
        u_quad = (_posterior_mean_1d(xs, log_f, y, 1.0, v) - y) / v
        return jnp.where(t < 1e-4, _well_score(y, delta) + y / var_end, u_quad)

    return control


def manywell50_controls(num_wells: int = 5, sigma: float = 2.0, horizon: float = 1.0):
    """manywell50: wells (x^2 - 2)^2 in the first coordinates, N(0, 1) in the rest. The OU
    score of an N(0, 1) coordinate is -y; its PIS control is linear, -y / (1/P + sigma^2 t)
    with P = 1 - 1 / (sigma^2 T), the precision of f = N(0, 1) / N(0, sigma^2 T)."""
    wells_score, wells_pis = manywell_score(2.0), manywell_pis_control(2.0, sigma, horizon)
    prec = 1.0 - 1.0 / (sigma**2 * horizon)

    def score(y, t):
        return jnp.concatenate([wells_score(y[:, :num_wells], t), -y[:, num_wells:]], axis=1)

    def pis_control(y, t):
        tail = -y[:, num_wells:] / (1.0 / prec + sigma**2 * t)
        return jnp.concatenate([wells_pis(y[:, :num_wells], t), tail], axis=1)

    return score, pis_control


def funnel_score(scale: float = 3.0, grid: int = 4001, half_width: float = 8.0,
                 stationary_var: float = 1.0):
    """Score of the OU marginal p_t of Neal's funnel (x1 ~ N(0, scale^2), x_i | x1 ~
    N(0, e^{x1})) under the OU reference with stationary law N(0, stationary_var I):
    quadrature over x1 on [-half_width, half_width] * scale; the target score below
    t = 1e-3, where the x1-integrand is narrower than the grid."""
    x1s = jnp.linspace(-half_width * scale, half_width * scale, grid)
    log_prior = -0.5 * (x1s / scale) ** 2

    def log_pt(y, t):
        a = jnp.exp(-t)
        v = -stationary_var * jnp.expm1(-2.0 * t)
        var_rest = a**2 * jnp.exp(x1s) + v  # (grid,)
        k = y.shape[0] - 1
        terms = (
            log_prior
            - 0.5 * (y[0] - a * x1s) ** 2 / v
            - 0.5 * jnp.sum(y[1:] ** 2) / var_rest
            - 0.5 * k * jnp.log(var_rest)
        )
        return jax.scipy.special.logsumexp(terms)

    def log_rho(y):
        k = y.shape[0] - 1
        return -0.5 * (y[0] / scale) ** 2 - 0.5 * jnp.sum(y[1:] ** 2) * jnp.exp(-y[0]) - 0.5 * k * y[0]

    grad_pt = jax.vmap(jax.grad(log_pt), (0, None))
    grad_rho = jax.vmap(jax.grad(log_rho))

    def score(y, t):
        return jnp.where(t < 1e-3, grad_rho(y), grad_pt(y, jnp.maximum(t, 1e-3)))

    return score


def floor_table(name: str, steps=(64, 128, 256), powers=(1.0, 2.0, 3.0), num=10_000) -> list[str]:
    target = get_target(name)
    pis_control = None
    if name == "gmm9":
        score = gmm9_score()
    elif name == "manywell5":
        score, pis_control = manywell_score(4.0), manywell_pis_control(4.0, 2.0, 1.0)
    elif name == "manywell50":
        score, pis_control = manywell50_controls()
    elif name == "funnel10":
        score = funnel_score()
    else:
        raise ValueError(f"no exact score for target {name!r} "
                         "(use gmm9, manywell5, manywell50 or funnel10)")
    schemes = [(integrator, control_from_score(score), partial(ou_scheme, 4.0, integrator=integrator))
               for integrator in ("em", "ei")]
    if pis_control is not None:
        schemes.append(("pis", pis_control, partial(brownian_scheme, 1.0, sigma=2.0)))
    rows = ["| integrator | K | grid power | Δlog Z | ESS |", "|---|---|---|---|---|"]
    for integrator, control, make_scheme in schemes:
        for k in steps:
            for p in powers:
                _, log_w = simulate_log_weights(
                    jax.random.PRNGKey(0),
                    make_scheme(num_steps=k, power=p),
                    control,
                    target.log_density,
                    num,
                    target.dim,
                )
                est = estimate_evidence(log_w)
                rows.append(
                    f"| {integrator} | {k} | {p:g} | {abs(est.log_z - target.log_z):.4f} "
                    f"| {est.ess:.3f} |"
                )
    return rows


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0] if argv else "gmm9"
    print(f"Exact-control floor on {name} (OU horizon T = 4; PIS sigma = 2, T = 1; 10,000 paths)")
    print("\n".join(floor_table(name)))


if __name__ == "__main__":
    main()
