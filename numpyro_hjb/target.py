"""NumPyro model -> flat target density in engine coordinates (docs/design.md s.1).

A :class:`Target` carries everything an engine needs and nothing model specific:

* ``log_density(x)``: the unnormalised log density log rho(x) = -Phi(x) of one flat point
  x in R^d, in the engine's coordinates. Without whitening x = z, the flat unconstrained
  latent vector, and Phi = U = ``potential_fn``. With whitening x = L^{-1}(z - mu) and
  Phi(x) = U(mu + L x) - log|det L|, which leaves Z = int exp(-Phi) unchanged.
* ``to_unconstrained(x)``: x -> z = mu + L x.
* ``constrain(z)``: flat unconstrained z -> dict of constrained values per latent site,
  deterministic sites included (NumPyro's own ``postprocess_fn``).

Only ``log_density`` and ``dim`` are used by the engines, so :meth:`Target.from_log_density`
wraps any flat density as well (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["Target", "ModelError", "make_target", "whiten", "apply_whitening"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Target:
    """A flat, unnormalised target density and the maps back to the model's sites.

    Attributes:
        log_density: x (d,) -> log rho(x), unnormalised, in engine coordinates.
        dim: d.
        to_unconstrained: x (d,) -> z (d,) = shift + scale_tril @ x.
        constrain: z (d,) -> {site: constrained value}, deterministic sites included.
        unravel: z (d,) -> {site: unconstrained value}.
        shift, scale_tril: the whitening map (zeros and identity when not whitened).
        site_names: latent site names in flattening order.
        improper_sites: latent sites whose prior is improper (the evidence is undefined).
        init: a point (engine coordinates) with a finite log density.
        whitening: "none", "laplace" or "advi".
    """

    log_density: Callable[[Array], Array]
    dim: int
    to_unconstrained: Callable[[Array], Array]
    constrain: Callable[[Array], dict]
    unravel: Callable[[Array], dict]
    shift: Array
    scale_tril: Array
    site_names: tuple[str, ...] = ()
    improper_sites: tuple[str, ...] = ()
    init: Array | None = None
    whitening: str = "none"
    model: Any = None
    model_args: tuple = ()
    model_kwargs: dict = dataclasses.field(default_factory=dict)

    @property
    def log_det_scale(self) -> float:
        """log|det L| of the whitening map."""
        return float(np.sum(np.log(np.abs(np.diag(np.asarray(self.scale_tril))))))

    def grad_log_density(self, x: Array) -> Array:
        return jax.grad(self.log_density)(x)

    def constrain_batch(self, x: Array) -> dict:
        """Engine coordinates (n, d) -> {site: (n, ...)} constrained values."""
        return jax.vmap(lambda xi: self.constrain(self.to_unconstrained(xi)))(x)

    @classmethod
    def from_log_density(
        cls, log_density: Callable[[Array], Array], dim: int, *, name: str = "x"
    ) -> "Target":
        """Wrap a flat log density on R^dim (no model; the single site is ``name``)."""
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        eye = np.eye(dim)
        return cls(
            log_density=log_density,
            dim=int(dim),
            to_unconstrained=lambda x: x,
            constrain=lambda z: {name: z},
            unravel=lambda z: {name: z},
            shift=np.zeros(dim),
            scale_tril=eye,
            site_names=(name,),
            init=jnp.zeros(dim),
        )


def _masked_entries(site: dict) -> bool:
    """Whether a latent site's log density is masked off for some of its entries."""
    import numpyro.distributions as dist

    masks = [site.get("mask")]
    fn = site["fn"]
    while fn is not None:
        if isinstance(fn, dist.MaskedDistribution):
            masks.append(fn._mask)
        fn = getattr(fn, "base_dist", None)
    return any(m is not None and m is not True and not bool(np.all(np.asarray(m)))
               for m in masks)


def _latent_sites(model_trace: dict) -> tuple[list[str], list[str]]:
    """Latent site names, and those with an improper prior; raise on discrete latents."""
    import numpyro.distributions as dist

    latent, improper = [], []
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        if getattr(fn, "has_enumerate_support", False) and fn.support.is_discrete:
            raise ValueError(
                f"Latent site '{name}' has a discrete distribution ({type(fn).__name__}); "
                "numpyro_hjb samples continuous latent sites only. Marginalise it out "
                "(e.g. with numpyro.infer.reparam or by summing in the model) or observe it."
            )
        if fn.support.is_discrete:
            raise ValueError(
                f"Latent site '{name}' has discrete support ({type(fn).__name__}); "
                "numpyro_hjb samples continuous latent sites only."
            )
        if _masked_entries(site):
            raise ValueError(
                f"Latent site '{name}' has masked entries (a mask, or the obs_mask= of an "
                "observed site): their values have no density, so the posterior is improper "
                "in those coordinates. Sample only the missing entries, as a site of their "
                "own, e.g. numpyro.sample('y_missing', dist.Normal(...).expand([num_missing]))."
            )
        base = fn
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if isinstance(base, dist.ImproperUniform):
            improper.append(name)
        latent.append(name)
    return latent, improper


class ModelError(RuntimeError):
    """The user's model raised when it was run (the original exception is its cause)."""


def make_target(
    model: Callable,
    *model_args: Any,
    rng_key: Array | None = None,
    whitening: str | None = None,
    prefit_steps: int = 2000,
    precision: str = "float32",
    **model_kwargs: Any,
) -> Target:
    """Build the flat unconstrained :class:`Target` of a NumPyro model.

    Args:
        model: a NumPyro model with continuous latent sites.
        *model_args, **model_kwargs: passed to the model (never mutated).
        rng_key: PRNG key for the initial point and the pre-fit (default key 0).
        whitening: None / "none", "laplace" (MAP + Hessian) or "advi" (full-rank ADVI via
            ``numpyro.infer.autoguide.AutoMultivariateNormal``).
        prefit_steps: optimisation steps of the pre-fit.
        precision: "float32" or "float64", the precision of the pre-fit (that of the engine
            the target is for: in float32 a Gaussian's whitened potential is quadratic only
            up to round-off, which a float64 engine would see).

    Raises:
        ValueError: discrete latent sites, no latent sites, an unknown whitening.
        RuntimeError: no initial point with a finite potential.
        ModelError: the model itself raised (the message names the last site it reached).
    """
    from numpyro.infer.initialization import init_to_uniform as init_strategy
    from numpyro.infer.util import initialize_model

    if not callable(model):
        raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    key_init, key_fit = jax.random.split(rng_key)
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_uniform

    # A trace with values from init_to_uniform works for improper sites too.
    tracer = handlers.trace(
        handlers.substitute(handlers.seed(model, key_init), substitute_fn=init_to_uniform)
    )
    try:
        prior_trace = tracer.get_trace(*model_args, **model_kwargs)
    except Exception as err:
        sites = list(getattr(tracer, "trace", {}))
        where = f" after site {sites[-1]!r}" if sites else " before its first site"
        raise ModelError(
            f"the model {getattr(model, '__name__', repr(model))!r} raised "
            f"{type(err).__name__}{where} when it was run once with the given arguments "
            f"({len(model_args)} positional, keywords {sorted(model_kwargs)}): {err}"
        ) from err
    latent, improper = _latent_sites(prior_trace)
    if not latent:
        raise ValueError(
            "The model has no latent sample sites: there is nothing to sample. "
            "Did you pass the observations as latent values?"
        )
    try:
        info, potential_fn, postprocess_fn, model_trace = initialize_model(
            key_init,
            model,
            init_strategy=init_strategy,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
    except RuntimeError as err:
        raise RuntimeError(
            "Could not find an initial point with a finite log density for the model: "
            f"{err}"
        ) from err
    z0, unravel = ravel_pytree(info.z)
    z0 = jnp.asarray(z0)
    dim = int(z0.shape[0])

    def flat_u(z):
        # Full-precision float32 matmuls: JAX's default on GPU lets them run in TF32. With
        # the default, the demo's log Z on an H200 was 9e-4 (14 standard errors) off the
        # exact value, which reduced precision would explain (it is exact on CPU).
        with jax.default_matmul_precision("highest"):
            return potential_fn(unravel(z))

    u0 = flat_u(z0)
    if not bool(jnp.isfinite(u0)):
        raise RuntimeError(
            f"The potential (minus log joint) is not finite at the initial point: {u0}. "
            f"Latent sites: {latent}."
        )

    def constrain(z):
        return postprocess_fn(unravel(z))

    base = Target(
        log_density=lambda x: -flat_u(x),
        dim=dim,
        to_unconstrained=lambda x: x,
        constrain=constrain,
        unravel=unravel,
        shift=np.zeros(dim),
        scale_tril=np.eye(dim),
        site_names=tuple(sorted(latent)),
        improper_sites=tuple(improper),
        init=z0,
        model=model,
        model_args=tuple(model_args),
        model_kwargs=dict(model_kwargs),
    )
    if whitening in (None, "none"):
        return base
    return whiten(
        base, method=whitening, rng_key=key_fit, num_steps=prefit_steps, precision=precision
    )


def _laplace(target: Target, num_steps: int) -> tuple[Array, Array]:
    """MAP by L-BFGS on Phi, then L = chol(H^{-1}) with H the Hessian at the MAP."""
    import optax

    neg = lambda x: -target.log_density(x)  # noqa: E731
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(neg)

    def step(carry, _):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=neg)
        return (optax.apply_updates(x, updates), state), value

    @jax.jit
    def fit(x0):
        (x_map, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), None, length=min(num_steps, 500))
        hess = jax.hessian(neg)(x_map)
        hess = 0.5 * (hess + hess.T)
        evals, evecs = jnp.linalg.eigh(hess)
        # Non-positive curvature (saddle, flat prior): fall back to unit scale there.
        evals = jnp.where(evals > 1e-8, evals, 1.0)
        cov = (evecs / evals) @ evecs.T
        return x_map, jnp.linalg.cholesky(0.5 * (cov + cov.T))

    return fit(jnp.asarray(target.init, jnp.zeros(()).dtype))


def _advi(target: Target, rng_key: Array, num_steps: int) -> tuple[Array, Array]:
    """Full-rank Gaussian by ADVI (NumPyro's AutoMultivariateNormal on the model)."""
    import numpyro
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal
    from numpyro.infer.initialization import init_to_value

    init_values = target.constrain(target.init)
    guide = AutoMultivariateNormal(
        target.model, init_loc_fn=init_to_value(values=init_values), init_scale=0.1
    )
    svi = SVI(target.model, guide, numpyro.optim.optax_to_numpyro(optax.adam(1e-2)), Trace_ELBO(4))
    result = svi.run(
        rng_key, num_steps, *target.model_args, progress_bar=False, **target.model_kwargs
    )
    loc = result.params["auto_loc"]
    tril = result.params["auto_scale_tril"]
    return loc, tril


def whiten(
    target: Target,
    method: str = "laplace",
    *,
    rng_key: Array | None = None,
    num_steps: int = 2000,
    precision: str = "float32",
) -> Target:
    """Re-express ``target`` in x = L^{-1}(z - mu) with (mu, L) from a Gaussian pre-fit.

    Phi(x) = U(mu + L x) - log|det L|  (docs/design.md s.1); Z is unchanged, so
    evidence estimates need no correction. ``precision``: that of the pre-fit.
    """
    if target.whitening != "none":
        raise ValueError("target is already whitened")
    if method not in ("laplace", "advi"):
        raise ValueError(f"whitening must be None, 'laplace' or 'advi', got {method!r}")
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64', got {precision!r}")
    rng_key = jax.random.PRNGKey(1) if rng_key is None else rng_key
    with jax.enable_x64(precision == "float64"):
        if method == "laplace":
            mu, tril = _laplace(target, num_steps)
        else:
            if target.model is None:
                raise ValueError("whitening='advi' needs a NumPyro model; use 'laplace'")
            mu, tril = _advi(target, rng_key, num_steps)
        mu, tril = np.asarray(mu), np.asarray(tril)
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(tril))):
        warnings.warn(f"{method} pre-fit failed (non-finite); continuing without whitening")
        return target
    return apply_whitening(target, mu, tril, method)


def apply_whitening(target: Target, shift: jax.Array, scale_tril: jax.Array, method: str) -> Target:
    """Re-express an unwhitened ``target`` in x = L^{-1}(z - mu) with *given* (mu, L).

    The map behind :func:`whiten`, also used to restore a saved fit without the pre-fit:
    Phi(x) = U(mu + L x) - log|det L| (docs/design.md s.1), so Z is unchanged.
    """
    if target.whitening != "none":
        raise ValueError("target is already whitened")
    # Host float64 copies, turned into arrays when traced: the maps then run in whatever
    # precision the caller computes in (float32, or float64 inside a float64 engine).
    mu = np.array(shift, dtype=np.float64)
    tril = np.array(scale_tril, dtype=np.float64)
    if mu.shape != (target.dim,) or tril.shape != (target.dim, target.dim):
        raise ValueError(
            f"whitening arrays have shapes {mu.shape}, {tril.shape}; the target has "
            f"dimension {target.dim}"
        )
    log_det = float(np.sum(np.log(np.abs(np.diag(tril)))))
    inner = target.log_density

    def to_unconstrained(x):
        return jnp.asarray(mu, x.dtype) + jnp.asarray(tril, x.dtype) @ x

    def log_density(x):
        return inner(to_unconstrained(x)) + log_det

    import scipy.linalg

    init = scipy.linalg.solve_triangular(tril, np.asarray(target.init, np.float64) - mu, lower=True)
    init = jnp.asarray(init, jnp.asarray(target.init).dtype)
    return dataclasses.replace(
        target,
        log_density=log_density,
        to_unconstrained=to_unconstrained,
        shift=mu,
        scale_tril=tril,
        init=init,
        whitening=method,
    )
