"""The Gaussian log density used by every path weight in the package.

    log N(x; m, diag v) = -1/2 sum_i [ (x_i - m_i)^2 / v_i + log(2 pi v_i) ]

over the last axis; ``mean`` and ``var`` broadcast against ``x`` (a scalar ``var`` is an
isotropic covariance).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["normal_logpdf"]


def normal_logpdf(x, mean, var):
    """log N(x; mean, diag(var)), summed over the last axis of x (shape x.shape[:-1])."""
    x = jnp.asarray(x)
    var = jnp.broadcast_to(jnp.asarray(var, x.dtype), x.shape)
    return -0.5 * jnp.sum((x - mean) ** 2 / var + jnp.log(2.0 * jnp.pi * var), axis=-1)
