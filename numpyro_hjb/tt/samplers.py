"""Samplers on the stored snapshots, with exact log weights (docs/design.md s.4).

The snapshots are FTTs of W_{t_j} (HJB route) or of h_{t_j} = e^{-(W_{t_j} - c)}
(Cole-Hopf route) at ascending forward times t_0 = 0 < ... < t_K = T, stacked core by core
into arrays (K+1, R_{k-1}, P_k + 1, R_k) (:func:`numpyro_hjb.tt.formulations.
stack_snapshots`). The score of the OU marginal is grad log p_t = -y - grad W_t, with
grad W = -grad h h / (h^2 + eps^2) from an h-TT. Every sampler starts from y_0 ~ N(0, I)
at t = T and returns x (n, d) in the target's coordinates (x = s y) and
log w = log rho~(y) - log q(y) for the proposal actually used, so that E_q[w] = Z:

* "ode": the probability-flow ODE dY/ds = -grad W_{T-s}(Y), one Heun step Phi_j per grid
  interval, and log q(y_end) = log N(y_0; 0, I) - sum_j log|det D Phi_j(y_j)| with the
  exact Jacobian of the discrete map (one per step, not per particle, when W_t is
  quadratic: the maps are then affine);
* "sde": the reverse SDE with control u(y, t) = -grad W_t(y) on the exponential-integrator
  scheme of :func:`numpyro_hjb.diffusion.ou_scheme`, with its path weights;
* "tweedie": moment-matched Gaussian reverse transitions (:func:`tweedie_paths`) with path
  weights, optionally ending with the exact-target jump (:func:`final_jump`);
* "auto": "ode" on the HJB route, "tweedie" on the Cole-Hopf route
  (:func:`sampler_for`).

All functions here are jax code: call them under ``jax.enable_x64(True)``.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from ..diffusion import ou_scheme, path_log_weights, simulate_paths
from ..gaussian import normal_logpdf
from . import core as C
from . import evaluate as E
from .settings import Sampling

__all__ = [
    "degree_segments",
    "final_jump",
    "grad_w",
    "log_h_derivatives",
    "ode_paths",
    "propose_chunk",
    "quadratic_snapshots",
    "sampler_for",
    "score_fn",
    "sde_paths",
    "tweedie_paths",
]


def sampler_for(sampling: Sampling, cole_hopf: bool) -> str:
    """The sampler actually used: "auto" is the probability-flow ODE on the HJB route
    (exact for Gaussians) and the moment-matched sampler on the Cole-Hopf route, where the
    ODE would read the score where the Hermite truncation of h is unreliable."""
    if sampling.sampler != "auto":
        return sampling.sampler
    return "tweedie" if cole_hopf else "ode"


def _cores_at(cores: tuple, times: jax.Array, t: jax.Array) -> list:
    """The cores of the snapshot nearest to forward time t."""
    j = jnp.argmin(jnp.abs(times - t))
    return [c[j] for c in cores]


def grad_w(cores, y, cole_hopf: bool, h_eps):
    """grad W_t(y) (n, d) for points y (n, d): from the W-TT, or -grad h h / (h^2 + eps^2)
    from the h-TT."""
    if not cole_hopf:
        return E.gradient(cores, y)
    h, gh, _ = E.value_grad_lap(cores, y, laplacian=False)
    return -gh * (h / (h**2 + h_eps**2))[:, None]


def score_fn(state, x: jax.Array, t: float) -> jax.Array:
    """grad log p_t(x) = -x - grad W_t(x) (n, d) in engine coordinates xi, at the snapshot
    of a :class:`~numpyro_hjb.tt.engine.TTState` nearest to t (call under
    ``jax.enable_x64(True)``)."""
    cores = _cores_at(tuple(jnp.asarray(c) for c in state.cores), jnp.asarray(state.times), t)
    return -x - grad_w(cores, x, state.cole_hopf, jnp.asarray(state.h_eps))


def log_h_derivatives(cores, y, cole_hopf: bool, h_eps):
    """(g, H) = (grad log h_t(y), diag of grad^2 log h_t(y)), both (n, d), h_t = e^{-W_t}.

    From an h-TT: g = grad h h / (h^2 + eps^2), H = d^2 h h / (h^2 + eps^2) - g^2 (the guard
    eps of :func:`grad_w`); from a W-TT: g = -grad W, H = -diag grad^2 W.
    """
    val, grad, diag2 = E.value_grad_hess_diag(cores, y)
    if not cole_hopf:
        return -grad, -diag2
    inv = (val / (val**2 + h_eps**2))[:, None]
    g = grad * inv
    return g, diag2 * inv - g**2


def _log_gamma(y):
    """log N(y; 0, I) (n,)."""
    return normal_logpdf(y, 0.0, 1.0)


def ode_paths(cores, times, key, num: int, dim: int, log_density, grad_w_fn,
              affine: bool = False):
    """Probability-flow ODE from t = T to 0, one Heun step per snapshot interval, with the
    exact log-determinants of the discrete maps (module docstring). With ``affine`` each
    step is the affine map y -> Phi_j(0) + D Phi_j(0) y: one d x d Jacobian per step
    instead of one per particle. It equals Phi_j when W is quadratic (total degree <= 2,
    so grad W and the Heun map are affine), and the log weights are exact for the map
    actually used either way. Returns (y (n, d), log w (n,))."""
    y0 = jax.random.normal(key, (num, dim), jnp.float64)
    rev = tuple(c[::-1] for c in cores)  # index 0 = time T
    t_rev = times[::-1]

    def step(carry, inp):
        y, log_q = carry
        ca, cb, h = inp

        def phi(z):  # one point (d,) -> (d,)
            fa = -grad_w_fn(ca, z[None])[0]
            fb = -grad_w_fn(cb, (z + h * fa)[None])[0]
            return z + 0.5 * h * (fa + fb)

        def phi_and_logdet(z):
            jac = jax.jacfwd(phi)(z)
            return phi(z), jnp.linalg.slogdet(jac)[1]

        if affine:  # the affine map through phi(0) with the Jacobian of phi at 0
            zero = jnp.zeros((dim,), y.dtype)
            jac = jax.jacfwd(phi)(zero)
            y_new = phi(zero) + y @ jac.T
            logdet = jnp.linalg.slogdet(jac)[1]
        else:
            y_new, logdet = jax.vmap(phi_and_logdet)(y)
        return (y_new, log_q - logdet), None

    hs = t_rev[:-1] - t_rev[1:]
    inputs = ([c[:-1] for c in rev], [c[1:] for c in rev], hs)
    (y_end, log_q), _ = jax.lax.scan(step, (y0, _log_gamma(y0)), inputs)
    return y_end, jax.vmap(log_density)(y_end) - log_q


def sde_paths(cores, times, key, num: int, dim: int, log_density, grad_w_fn,
              sampling: Sampling):
    """The reverse SDE on the "ei" scheme of the sampler's grid, control -grad W_t, with its
    path weights (:func:`numpyro_hjb.diffusion.path_log_weights`). Returns (y, log w)."""
    scheme = ou_scheme(sampling.horizon, sampling.num_sampling_steps, "ei", sampling.grid_power)

    def control(y, t):
        return -grad_w_fn(_cores_at(cores, times, t), y)

    ys, us = simulate_paths(key, scheme, control, num, dim, dtype=jnp.float64)
    log_w, _ = path_log_weights(scheme, ys, us, log_density)
    return ys[-1], log_w


def final_jump(key, y, t_s, log_density, newton: int):
    """The exact-target last step t_s -> 0 (a = e^{-t_s}, v = 1 - a^2) of the reverse process,
    for points y (n, d) at t_s.

    Its exact kernel is  p(x | y) prop. to N(x; a y, v) h_0(x),  h_0 = rho~ / gamma, known
    pointwise from the target (no TT). Proposal: the Laplace approximation N(mu, diag 1/P) of
    phi(x) = -|x - a y|^2 / (2 v) + log rho~(x) + |x|^2 / 2, by ``newton`` diagonal Newton
    steps x <- x + grad phi / P from x = y (P = 1/v - 1 - diag grad^2 log rho~, floored at
    1/(2 v); steps clipped to 3 sqrt(v)), mu the last iterate. Returns (x (n, d), the
    log-weight increment log N(x; a y, v) - log q(x | y) (n,)), exact for any mu, P.
    """
    d = y.shape[-1]
    a = jnp.exp(-t_s)
    v = -jnp.expm1(-2.0 * t_s)
    grad_lr = jax.grad(log_density)

    def grad_diag(z):  # grad log rho~ and diag of its Hessian, one point (d,)
        eye = jnp.eye(d, dtype=z.dtype)
        hd = jax.vmap(lambda e: jnp.vdot(jax.jvp(grad_lr, (z,), (e,))[1], e))(eye)
        return grad_lr(z), hd

    def moments(z, y1):
        g, hd = grad_diag(z)
        gphi = -(z - a * y1) / v + g + z
        prec = jnp.maximum(1.0 / v - 1.0 - hd, 0.5 / v)
        return gphi, prec

    def one(y1):
        z = y1
        for _ in range(newton):
            gphi, prec = moments(z, y1)
            step = jnp.clip(gphi / prec, -3.0 * jnp.sqrt(v), 3.0 * jnp.sqrt(v))
            z_new = z + step
            z = jnp.where(jnp.all(jnp.isfinite(z_new)), z_new, z)
        _, prec = moments(z, y1)
        return z, prec

    mu, prec = jax.vmap(one)(y)
    ok = jnp.all(jnp.isfinite(mu) & jnp.isfinite(prec), axis=-1, keepdims=True)
    mu = jnp.where(ok, mu, a * y)
    var = jnp.where(ok, 1.0 / prec, v)
    x = mu + jnp.sqrt(var) * jax.random.normal(key, y.shape, y.dtype)
    return x, normal_logpdf(x, a * y, v) - normal_logpdf(x, mu, var)


def stored_degree(cores) -> int:
    """P, the largest Hermite degree of the stacked snapshots' cores (J, R0, P + 1, R1)."""
    return max(int(c.shape[2]) for c in cores) - 1


def degree_segments(cores: tuple, times: np.ndarray, jump: bool,
                    rel_tol: float = 1e-7) -> tuple[tuple[int, int], ...]:
    """The Hermite degree each step of :func:`tweedie_paths` needs on the Cole-Hopf route,
    as segments ((last step, degree), ...) in the order the steps run (descending times).

    The snapshots are h_t = e^{tL} h_0, whose coefficient of multi-degree alpha is that of
    h_0 times e^{-t |alpha|}, so the part of h_t above degree q in some mode shrinks as t
    grows. The step at snapshot time t runs at the smallest q in P, P/2, P/4, ... (q >= 8,
    P the stored degree) whose cut P_q (degree <= q in every mode) changes the snapshot by
    ||h_t - P_q h_t|| <= ``rel_tol`` ||h_t|| in L2(gamma). That error falls as t grows (the
    cut part decays at rate >= q + 1), so each q's first admissible snapshot is found by
    bisection. Cutting changes only the proposal: its weights stay exact. ``cores``: host
    arrays (J, R0, P + 1, R1) per mode at ascending ``times``.
    """
    top = stored_degree(cores)
    candidates = [top]
    while candidates[-1] // 2 >= 8:
        candidates.append(candidates[-1] // 2)

    @lru_cache(maxsize=None)
    def snapshot(j: int):  # the bisections of every q revisit the same snapshots
        h = C.from_cores([np.asarray(c[j]) for c in cores])
        return h, max(C.norm(h), 1e-300)

    def cut_error(j: int, q: int) -> float:
        h, h_norm = snapshot(j)
        return C.norm(C.sub(h, C.project_degrees(h, q))) / h_norm

    k_steps = len(times) - 1
    first = 2 if jump else 1  # the steps use the snapshots first..K
    degree_of = np.full(k_steps + 1, top)
    for q in candidates[1:]:  # the first snapshot index from which q suffices (bisection)
        lo, hi = first, k_steps + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cut_error(mid, q) <= rel_tol:
                hi = mid
            else:
                lo = mid + 1
        degree_of[lo:] = np.minimum(degree_of[lo:], q)
    segments: list[list[int]] = []
    for pos, j in enumerate(range(k_steps, first - 1, -1)):
        q = int(degree_of[j])
        if segments and segments[-1][1] == q:
            segments[-1][0] = pos + 1
        else:
            segments.append([pos + 1, q])
    return tuple((stop, q) for stop, q in segments)


def tweedie_paths(cores, times, key, num: int, dim: int, log_density, cole_hopf: bool, h_eps,
                  jump: bool = False, newton: int = 6, segments=None):
    """Reverse-time sampler with moment-matched Gaussian transitions and exact path weights.

    Forward OU over [t', t] (h = t - t', a = e^{-h}, v = 1 - a^2): the exact reverse kernel is
    the Doob transform  p(x' | y) = N(x'; a y, v) h_{t'}(x') / h_t(y)  (as e^{hL} h_{t'} = h_t),
    whose first two moments follow from Tweedie's formulas with
    E_{N(ay, v)}[grad h_{t'}] = e^{h} grad h_t(y):

        mean = a y + (v / a) grad log h_t(y),   Cov = v I + (v / a)^2 grad^2 log h_t(y).

    The proposal uses N(mean, diag Cov) (diagonal floored at 1e-3 v; reference kernel where
    the TT gives non-finite moments); exact for Gaussian product targets, second order in
    general. Path weight (y_0 ~ N(0, I), the OU reference is stationary):

        log w = log rho~(y_K) - log N(y_K; 0, I)
                + sum_k [log N(y_{k+1}; a_k y_k, v_k) - log N(y_{k+1}; mean_k, Cov_k)],

    exact for the proposal actually used (E[w] = Z for any moments). With ``jump`` the last
    interval [0, times[1]] is done by :func:`final_jump` (exact target) instead.
    ``segments`` (:func:`degree_segments`; None: all steps at the stored degree) runs the
    steps in scans of decreasing Hermite degree. Returns (y (n, d), log w (n,)).
    """
    key, k_jump = jax.random.split(key)
    k0, k1 = jax.random.split(key)
    y0 = jax.random.normal(k0, (num, dim), jnp.float64)
    k_steps = times.shape[0] - 1
    noise = jax.random.normal(k1, (k_steps, num, dim), jnp.float64)
    last = 1 if jump else 0
    idx = jnp.arange(k_steps, last, -1)  # snapshot index of t_k (descending times)

    def step(cut, carry, inp):
        y, acc = carry
        j, eps = inp
        h = times[j] - times[j - 1]
        a = jnp.exp(-h)
        v = -jnp.expm1(-2.0 * h)
        g, hd = log_h_derivatives([c[j] for c in cut], y, cole_hopf, h_eps)
        mean = a * y + (v / a) * g
        var = jnp.maximum(v + (v / a) ** 2 * hd, 1e-3 * v)
        ok = jnp.all(jnp.isfinite(mean) & jnp.isfinite(var), axis=-1, keepdims=True)
        mean = jnp.where(ok, mean, a * y)
        var = jnp.where(ok, var, v)
        y_next = mean + jnp.sqrt(var) * eps
        acc = acc + normal_logpdf(y_next, a * y, v) - normal_logpdf(y_next, mean, var)
        return (y_next, acc), None

    if segments is None:
        segments = ((k_steps - last, stored_degree(cores)),)
    carry, start = (y0, jnp.zeros(num, jnp.float64)), 0
    for stop, degree in segments:  # a few scans, each at one Hermite degree
        cut = [c[:, :, : degree + 1, :] for c in cores]
        carry, _ = jax.lax.scan(partial(step, cut), carry,
                                (idx[start:stop], noise[: k_steps - last][start:stop]))
        start = stop
    y_end, acc = carry
    if jump:
        y_end, inc = final_jump(k_jump, y_end, times[1], log_density, newton)
        acc = acc + inc
    return y_end, jax.vmap(log_density)(y_end) - _log_gamma(y_end) + acc


def quadratic_snapshots(cores: tuple, rel_tol: float = 1e-12) -> bool:
    """Whether every stacked W-snapshot (cores (J, R0, P + 1, R1) per mode, host arrays) is
    quadratic: its squared L2(gamma) mass above total degree 2 is at most ``rel_tol`` of
    its squared norm (:func:`numpyro_hjb.tt.core.total_degree_norms`). The tolerance admits
    the fit's and the integrator's round-off (a fitted quadratic carries ~1e-18); it only
    decides the proposal, since the affine steps' weights are exact either way."""
    for j in range(cores[0].shape[0]):
        norms = C.total_degree_norms(C.from_cores([np.asarray(c[j]) for c in cores]))
        if norms[-1] > rel_tol * max(norms.sum(), 1e-300):
            return False
    return True


@partial(jax.jit, static_argnames=("num", "sampler", "sampling", "log_density", "cole_hopf",
                                   "jump", "affine", "segments"))
def propose_chunk(cores, times, scale, h_eps, key, *, num: int, sampler: str,
                  sampling: Sampling, log_density, cole_hopf: bool, jump: bool = False,
                  affine: bool = False, segments=None):
    """``num`` proposals x = s y (num, d) and their log weights (num,) by ``sampler`` ("ode",
    "sde" or "tweedie") from stacked snapshots ``cores`` at ``times`` (module docstring);
    ``log_density``: log rho~ in engine coordinates (hashable: it is a static argument);
    ``affine``: the ODE sampler's affine steps (:func:`ode_paths`; for quadratic W-snapshots,
    :func:`quadratic_snapshots`); ``segments``: the tweedie sampler's degree segments
    (:func:`degree_segments`, a static tuple)."""
    dim = scale.shape[0]
    if sampler == "tweedie":
        y, log_w = tweedie_paths(cores, times, key, num, dim, log_density, cole_hopf, h_eps,
                                 jump, sampling.jump_newton, segments)
    else:
        grad_w_fn = partial(grad_w, cole_hopf=cole_hopf, h_eps=h_eps)
        if sampler == "sde":
            y, log_w = sde_paths(cores, times, key, num, dim, log_density, grad_w_fn, sampling)
        else:
            y, log_w = ode_paths(cores, times, key, num, dim, log_density, grad_w_fn, affine)
    return scale * y, log_w
