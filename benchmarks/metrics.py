"""Sample-quality and evidence metrics of docs/lab/benchmarks.md (its header), as pure functions.

* :func:`delta_log_z`: |log Z_hat - log Z|.
* :func:`sinkhorn_w2`: entropic OT between model and exact samples (POT), squared Euclidean
  cost, absolute epsilon :data:`SINKHORN_EPS`, debiased Sinkhorn divergence by default:
  S(a, b) = OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2, with OT_eps the transport cost
  <P_eps, C> of the entropic plan P_eps (log-domain Sinkhorn).
* :func:`delta_std`: mean over dimensions of |std(samples) - true std|.
* :func:`mode_coverage`: modes holding at least half their true weight, and the total
  variation between sampled and true mode weights.
* :func:`well_balance`: for many-well targets with too many modes to enumerate, the largest
  deviation over double-well coordinates of the fraction of x_i > 0 from 1/2.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SINKHORN_EPS",
    "SINKHORN_NUM_POINTS",
    "SINKHORN_MAX_ITER",
    "SINKHORN_TOL",
    "sinkhorn_settings",
    "delta_log_z",
    "sinkhorn_w2",
    "delta_std",
    "mode_coverage",
    "mode_weights",
    "well_balance",
]

#: absolute entropic regularisation epsilon (cost units: squared distance)
SINKHORN_EPS = 0.05
#: points per side (the first this many of each sample set are used)
SINKHORN_NUM_POINTS = 2000
#: Sinkhorn iterations cap and marginal-violation stopping threshold
SINKHORN_MAX_ITER = 200
SINKHORN_TOL = 1e-4


def sinkhorn_settings(
    eps: float = SINKHORN_EPS, debiased: bool = True, num_points: int = SINKHORN_NUM_POINTS
) -> str:
    """One-line description of the W2_gamma settings (for table headers)."""
    kind = "debiased Sinkhorn divergence" if debiased else "entropic OT cost <P_eps, C>"
    return (
        f"{kind}, squared Euclidean cost, eps = {eps:g} (absolute), {num_points} vs "
        f"{num_points} points, log-domain Sinkhorn (POT), <= {SINKHORN_MAX_ITER} iterations, "
        f"tol {SINKHORN_TOL:g}"
    )


def delta_log_z(log_z_hat: float, log_z: float) -> float:
    """|log Z_hat - log Z|."""
    return float(abs(float(log_z_hat) - float(log_z)))


def _check_samples(name: str, x, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _entropic_cost(x, y, eps: float) -> float:
    """<P_eps, C> for uniform weights, C_ij = |x_i - y_j|^2, by POT's log-domain Sinkhorn."""
    import jax.numpy as jnp
    import ot

    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    cost = ot.dist(xj, yj, metric="sqeuclidean")
    a = jnp.full(xj.shape[0], 1.0 / xj.shape[0], dtype=jnp.float32)
    b = jnp.full(yj.shape[0], 1.0 / yj.shape[0], dtype=jnp.float32)
    value = ot.sinkhorn2(
        a, b, cost, eps, method="sinkhorn_log", numItermax=SINKHORN_MAX_ITER,
        stopThr=SINKHORN_TOL,
    )
    return float(value)


def sinkhorn_w2(
    samples,
    exact,
    eps: float = SINKHORN_EPS,
    debiased: bool = True,
    num_points: int = SINKHORN_NUM_POINTS,
) -> dict:
    """Entropic optimal-transport distance W2_gamma between two sample sets.

    Cost |x - y|^2 (so the value is on the scale of W_2^2), uniform weights on the first
    ``num_points`` rows of each set, absolute regularisation ``eps``. With ``debiased`` the
    Sinkhorn divergence S = OT(a, b) - (OT(a, a) + OT(b, b)) / 2 is returned (zero for
    identical sets); otherwise OT(a, b). Computed with ``ot.sinkhorn2(method="sinkhorn_log")``
    on the JAX backend.

    Returns:
        dict with ``w2`` and the settings: ``eps``, ``debiased``, ``cost``, ``num_points``.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    x = _check_samples("samples", samples)
    y = _check_samples("exact", exact, x.shape[1])
    x, y = x[:num_points], y[:num_points]
    value = _entropic_cost(x, y, eps)
    if debiased:
        value -= 0.5 * (_entropic_cost(x, x, eps) + _entropic_cost(y, y, eps))
    return {
        "w2": float(value),
        "eps": float(eps),
        "debiased": bool(debiased),
        "cost": "sqeuclidean",
        "num_points": int(min(x.shape[0], y.shape[0])),
    }


def delta_std(samples, true_std) -> float:
    """Mean over dimensions of |std of samples - true std| (population std, ddof=0)."""
    x = _check_samples("samples", samples)
    s = np.asarray(true_std, dtype=np.float64).ravel()
    if s.shape[0] != x.shape[1]:
        raise ValueError(f"true_std must have {x.shape[1]} entries, got {s.shape[0]}")
    return float(np.mean(np.abs(x.std(axis=0) - s)))


def mode_weights(samples, mode_of, num_modes: int) -> np.ndarray:
    """Fraction of samples assigned to each mode by ``mode_of``."""
    idx = np.asarray(mode_of(np.asarray(samples))).astype(int).ravel()
    return np.bincount(idx, minlength=num_modes)[:num_modes] / max(idx.size, 1)


def mode_coverage(samples, target) -> tuple[int, int, float]:
    """(modes holding >= half their true weight, number of modes, TV distance).

    TV = 1/2 sum_m |p_hat_m - p_m| between the sampled mode frequencies p_hat and the true
    mode weights p (``target.mode_weights``; modes assigned by ``target.mode_of``).
    """
    if target.mode_of is None or target.mode_weights is None:
        raise ValueError(
            f"target {target.name!r} has no enumerated modes; use well_balance instead"
        )
    x = _check_samples("samples", samples, target.dim)
    true_w = np.asarray(target.mode_weights, dtype=np.float64)
    est_w = mode_weights(x, target.mode_of, true_w.size)
    covered = int(np.sum(est_w >= 0.5 * true_w))
    tv = float(0.5 * np.sum(np.abs(est_w - true_w)))
    return covered, int(true_w.size), tv


def well_balance(samples, num_wells: int) -> float:
    """max_{i <= num_wells} |fraction of samples with x_i > 0 - 1/2| (0 = balanced wells)."""
    x = _check_samples("samples", samples)
    if not 1 <= num_wells <= x.shape[1]:
        raise ValueError(f"num_wells must be in [1, {x.shape[1]}], got {num_wells}")
    frac = np.mean(x[:, :num_wells] > 0, axis=0)
    return float(np.max(np.abs(frac - 0.5)))
