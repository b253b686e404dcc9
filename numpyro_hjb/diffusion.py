"""The reference diffusions, their time grids and the path-space log weight (docs/design.md s.2, s.3).

Forward (noising) OU process dX = -X dt + sqrt(2) dW with stationary law gamma = N(0, I);
X_t | X_s ~ N(a X_s, (1 - a^2) I), a = exp(-(t - s)). A time change beta(t) is a choice of
grid here: a non-uniform grid on the constant-rate process is the same discretisation.

Every sampler in the package is a discrete Markov chain y_0 -> ... -> y_K in R^d, run in
*generative* direction, with Gaussian transitions

    F_k(y' | y) = N(y'; alpha_k y + c_k u(y, t_k), vF_k I)          (the learned/controlled law)
    R_k(y' | y) = N(y'; a_k y, v_k I)                                (the reference law)

from a common initial law N(0, tau_0 I) (tau_0 = 0: the point 0). The reference's marginal at
the end is N(0, tau_K I). The path weight (Radon-Nikodym derivative of the target path
measure, rho(y_K)/ref(y_K) times the reference path, against F)

    log w = log rho(y_K) - log N(y_K; 0, tau_K I) + sum_k [log R_k(y_{k+1}|y_k) - log F_k(y_{k+1}|y_k)]

satisfies E_F[w] = Z for every control u and every K (docs/design.md s.3). For the OU reference
started at gamma, gamma(y_K) prod_k B_k(y_k | y_{k+1}) = gamma(y_0) prod_k R_k(y_{k+1} | y_k)
by reversibility, so this is exactly the DIS weight with the exact noising transitions B_k.

Control parametrisation: u = score + y / tau_K, i.e. u = grad log(p_t / gamma) for the OU
reference, so u = 0 is the reference itself and the optimal u is known in closed form for a
Gaussian target. The schemes:

* "ei" (DDS; exponential integrator of dY = (-Y + 2u) ds + sqrt 2 dB, u frozen over a step):
  alpha = a, c = 2 (1 - a), vF = 1 - a^2.
* "em" (DIS; Euler-Maruyama of the reversed SDE dY = (Y + 2 score) ds + sqrt 2 dB):
  alpha = 1 - h, c = 2 h, vF = 2 h.
* "pis" (PIS; Brownian reference sigma dB started at 0): a = alpha = 1, c = vF = v = sigma^2 h,
  tau_0 = 0, tau_K = sigma^2 T.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .gaussian import normal_logpdf
from .sharding import constrain_particles

__all__ = [
    "PathScheme",
    "bridge_log_weights",
    "brownian_scheme",
    "control_from_score",
    "gaussian_ou_marginal",
    "ou_scheme",
    "ou_transition",
    "path_log_weight_terms",
    "path_log_weights",
    "reference_bridge",
    "simulate_log_weights",
    "simulate_paths",
    "time_grid",
]

Array = jax.Array
ControlFn = Callable[[Array, Array], Array]  # (y (B, d), t scalar) -> u (B, d)


class PathScheme(NamedTuple):
    """Per-step coefficients of F_k and R_k; arrays of shape (K,), times of shape (K+1,).

    ``times[k]`` is the forward (noising) time at y_k: times[0] = T, times[K] = 0.
    """

    times: Array
    ref_scale: Array
    ref_var: Array
    gen_scale: Array
    gen_control: Array
    gen_var: Array
    init_var: float
    final_var: float

    @property
    def num_steps(self) -> int:
        return int(self.ref_scale.shape[0])


def time_grid(horizon: float, num_steps: int, power: float = 1.0) -> Array:
    """Forward times t_k = T (1 - k/K)^power, k = 0..K (T down to 0; power > 1 refines t ~ 0)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    s = jnp.linspace(0.0, 1.0, num_steps + 1)
    return horizon * (1.0 - s) ** power


def ou_transition(h: Array) -> tuple[Array, Array]:
    """Exact OU transition over a forward time h: (a, v) with X' ~ N(a X, v I)."""
    a = jnp.exp(-h)
    return a, -jnp.expm1(-2.0 * h)


def ou_scheme(
    horizon: float = 4.0,
    num_steps: int = 100,
    integrator: str = "ei",
    power: float = 1.0,
    sigma: float = 1.0,
) -> PathScheme:
    """Time reversal of the OU process from gamma at time T to the target at time 0.

    ``sigma`` scales the reference: dX = -X dt + sqrt(2) sigma dW, stationary law
    gamma = N(0, sigma^2 I). Its reversal is dY = (-Y + 2 sigma^2 u) ds + sqrt(2) sigma dB with
    u = score + y / sigma^2, so c and every variance are multiplied by sigma^2 (sigma = 1:
    docs/design.md s.2).
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    times = time_grid(horizon, num_steps, power)
    h = times[:-1] - times[1:]
    a, v = ou_transition(h)
    if integrator == "ei":
        alpha, c, v_gen = a, 2.0 * (1.0 - a), v
    elif integrator == "em":
        alpha, c, v_gen = 1.0 - h, 2.0 * h, 2.0 * h
    else:
        raise ValueError(f"integrator must be 'ei' or 'em', got {integrator!r}")
    s2 = float(sigma) ** 2
    return PathScheme(times, a, s2 * v, alpha, s2 * c, s2 * v_gen, s2, s2)


def brownian_scheme(
    horizon: float = 1.0, num_steps: int = 100, sigma: float = 2.0, power: float = 1.0
) -> PathScheme:
    """PIS: Brownian reference sigma B_s from the point 0; 'times' are the times left, T - s,
    on :func:`time_grid` (power > 1 refines the data end, as for the OU schemes)."""
    times = time_grid(horizon, num_steps, power)
    h = times[:-1] - times[1:]
    var = sigma**2 * h
    ones = jnp.ones_like(h)
    return PathScheme(times, ones, var, ones, var, var, 0.0, float(sigma**2 * horizon))


def _initial_and_noise(rng_key, scheme, num, dim, dtype):
    key0, key_steps = jax.random.split(rng_key)
    y0 = jnp.sqrt(jnp.asarray(scheme.init_var, dtype)) * jax.random.normal(key0, (num, dim), dtype)
    noise = jax.random.normal(key_steps, (scheme.num_steps, num, dim), dtype)
    return constrain_particles(y0, 0), constrain_particles(noise, 1)


def _step_inputs(scheme: PathScheme, noise: Array):
    return (
        scheme.times[:-1],
        scheme.gen_scale,
        scheme.gen_control,
        scheme.gen_var,
        scheme.ref_scale,
        scheme.ref_var,
        noise,
    )


def simulate_paths(
    rng_key: Array,
    scheme: PathScheme,
    control_fn: ControlFn,
    num: int,
    dim: int,
    dtype=jnp.float32,
    has_aux: bool = False,
):
    """Simulate ``num`` paths of F.

    Returns (ys (K+1, num, d), us (K, num, d)), plus the stacked auxiliary outputs of
    ``control_fn`` when ``has_aux`` (then control_fn returns (u, aux)). Differentiable
    w.r.t. the control's parameters (reparametrisation).
    """
    y0, noise = _initial_and_noise(rng_key, scheme, num, dim, dtype)

    def step(y, inp):
        t, alpha, c, v, _, _, eps = inp
        out = control_fn(y, t)
        u, aux = out if has_aux else (out, None)
        y_next = alpha * y + c * u + jnp.sqrt(v) * eps
        return y_next, (y_next, u, aux)

    _, (ys, us, auxs) = jax.lax.scan(step, y0, _step_inputs(scheme, noise))
    ys = jnp.concatenate([y0[None], ys], axis=0)
    return (ys, us, auxs) if has_aux else (ys, us)


def simulate_log_weights(
    rng_key: Array,
    scheme: PathScheme,
    control_fn: ControlFn,
    log_density: Callable[[Array], Array],
    num: int,
    dim: int,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    """Simulate F and accumulate log w on the fly (no stored path): (y_K (num, d), log_w (num,)).

    The same weight as :func:`path_log_weights`, with memory independent of K.
    """
    y0, noise = _initial_and_noise(rng_key, scheme, num, dim, dtype)

    def step(carry, inp):
        y, acc = carry
        t, alpha, c, v_gen, a, v_ref, eps = inp
        u = control_fn(y, t)
        mean_gen = alpha * y + c * u
        y_next = mean_gen + jnp.sqrt(v_gen) * eps
        acc = acc + normal_logpdf(y_next, a * y, v_ref) - normal_logpdf(y_next, mean_gen, v_gen)
        return (y_next, acc), None

    (y_end, acc), _ = jax.lax.scan(
        step, (y0, jnp.zeros(num, dtype)), _step_inputs(scheme, noise)
    )
    log_rho = jax.vmap(log_density)(y_end)
    log_ref_end = normal_logpdf(y_end, 0.0, scheme.final_var)
    return y_end, log_rho - log_ref_end + acc


def path_log_weight_terms(
    scheme: PathScheme, ys: Array, us: Array, log_density: Callable[[Array], Array]
) -> tuple[Array, Array, Array]:
    """The terms of log w (docs/design.md s.3): per-step log r_k - log f_k (K, B), the terminal
    term log rho(y_K) - log N(y_K; 0, final_var) (B,), and log rho(y_K) (B,).

    log w is the terminal term plus the sum of the steps (:func:`path_log_weights`); the
    split says where along the path a sampler loses weight (benchmarks.weight_budget)."""
    y, y_next = ys[:-1], ys[1:]
    col = lambda v: v[:, None, None]
    mean_ref = col(scheme.ref_scale) * y
    mean_gen = col(scheme.gen_scale) * y + col(scheme.gen_control) * us
    log_r = normal_logpdf(y_next, mean_ref, col(scheme.ref_var))
    log_f = normal_logpdf(y_next, mean_gen, col(scheme.gen_var))
    y_end = ys[-1]
    log_rho = jax.vmap(log_density)(y_end)
    log_ref_end = normal_logpdf(y_end, 0.0, scheme.final_var)
    return log_r - log_f, log_rho - log_ref_end, log_rho


def path_log_weights(
    scheme: PathScheme, ys: Array, us: Array, log_density: Callable[[Array], Array]
) -> tuple[Array, Array]:
    """log w per path (docs/design.md s.3) from states ys (K+1, B, d) and controls us (K, B, d).

    Returns (log_w (B,), log rho(y_K) (B,)).
    """
    steps, terminal, log_rho = path_log_weight_terms(scheme, ys, us, log_density)
    return terminal + jnp.sum(steps, axis=0), log_rho


def reference_bridge(rng_key: Array, scheme: PathScheme, y_end: Array) -> Array:
    """A path of the reference R conditioned on its end: ys (K+1, B, d) with ys[K] = y_end.

    R is Gaussian and Markov with marginal variances tau_{k+1} = a_k^2 tau_k + v_k
    (tau_0 = init_var), so its reversal is Gaussian as well:

        y_k | y_{k+1} ~ N(a_k tau_k / tau_{k+1} y_{k+1}, tau_k v_k / tau_{k+1} I).

    For the OU reference this is the exact noising process run forward from the data end;
    for PIS it is a Brownian bridge to the point 0. The weight of such a path (docs/design.md s.3)
    is what a Metropolis move of y_K needs to rejoin path space (:func:`bridge_log_weights`).
    """
    dtype = y_end.dtype
    a = scheme.ref_scale.astype(dtype)
    v = scheme.ref_var.astype(dtype)

    def forward_var(tau, inp):
        a_k, v_k = inp
        return a_k**2 * tau + v_k, tau

    _, tau = jax.lax.scan(forward_var, jnp.asarray(scheme.init_var, dtype), (a, v))
    tau_next = a**2 * tau + v
    mean_coef, var = a * tau / tau_next, tau * v / tau_next
    noise = jax.random.normal(rng_key, (scheme.num_steps, *y_end.shape), dtype)

    def back(y_next, inp):
        m, s, eps = inp
        y = m * y_next + jnp.sqrt(s) * eps
        return y, y

    _, ys = jax.lax.scan(back, y_end, (mean_coef, var, noise), reverse=True)
    return jnp.concatenate([ys, y_end[None]], axis=0)


def bridge_log_weights(
    rng_key: Array,
    scheme: PathScheme,
    control_fn: ControlFn,
    log_density: Callable[[Array], Array],
    y_end: Array,
) -> Array:
    """log w (B,) of fresh reference bridges ending at y_end (B, d) (:func:`reference_bridge`).

    The extended target rho(y_K) R(y_{0:K-1} | y_K) / Z has the posterior as its y_K
    marginal, so moving y_K with any posterior-invariant kernel and then drawing a new
    bridge is an exact move on path space; this is the weight of the new path.
    """
    ys = reference_bridge(rng_key, scheme, y_end)
    us = jax.lax.map(lambda inp: control_fn(*inp), (ys[:-1], scheme.times[:-1].astype(y_end.dtype)))
    return path_log_weights(scheme, ys, us, log_density)[0]


def control_from_score(score_fn: Callable[[Array, Array], Array], final_var: float = 1.0):
    """u(y, t) = score(y, t) + y / tau_K: the control of a known score (OU: u = grad log p_t/gamma)."""

    def control(y, t):
        return score_fn(y, t) + y / final_var

    return control


def gaussian_ou_marginal(mean: Array, cov: Array, t: Array) -> tuple[Array, Array]:
    """p_t = N(e^{-t} m, e^{-2t} S + (1 - e^{-2t}) I) for X_0 ~ N(m, S) (closed form)."""
    a = jnp.exp(-t)
    d = mean.shape[0]
    return a * mean, a**2 * cov + (1.0 - a**2) * jnp.eye(d, dtype=cov.dtype)
