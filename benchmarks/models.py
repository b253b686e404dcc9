"""Benchmark targets that are real NumPyro models (BenchmarkTarget instances).

=====================  ===  ===============================================================
name                   d    model, reference
=====================  ===  ===============================================================
eight_schools          10   centred eight schools; log Z by 1-D quadrature over tau (mu and
                            theta integrated in closed form); posterior moments likewise
logistic_regression    31   breast-cancer data (scikit-learn's copy of the UCI set, 569 x 30,
                            standardised), N(0, 1) priors; log Z by importance sampling with
                            a multivariate-t proposal fitted to a long NUTS run (stored in
                            data/references.json with its standard error)
random_walk50          50   Gaussian random walk observed with noise, observations 20..29
                            missing; posterior and log Z in closed form (a Gaussian model)
phi4                   64   lattice phi^4 on 8 x 8 (kappa 0.3, lambda 0.022) as a flat
                            density; <|m|> from a long NUTS run (data/references.json)
=====================  ===  ===============================================================

``python -m benchmarks.models references`` recomputes the stored references.
"""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .targets import BenchmarkTarget

__all__ = ["eight_schools", "logistic_regression", "random_walk", "phi4", "MODEL_TARGETS"]

_REFERENCES = os.path.join(os.path.dirname(__file__), "data", "references.json")


def _reference(name: str) -> dict:
    with open(_REFERENCES) as f:
        return json.load(f)[name]


def _flat(model, *args, **kwargs):
    """(log density, dim, site names) of a model's flat unconstrained target."""
    from numpyro_hjb import make_target

    target = make_target(model, *args, **kwargs)
    return target.log_density, target.dim, target


# --------------------------------------------------------------------------- eight schools

SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools_model(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def _schools_quadrature():
    """log p(y) and the posterior means / sds of (mu, log tau, theta) by quadrature in tau:
    given tau, y ~ N(0, D + 25 11^T) with D = diag(sigma^2 + tau^2) and everything else is
    Gaussian."""
    from scipy import integrate, stats

    y, s = SCHOOLS_Y, SCHOOLS_SIGMA
    u = np.linspace(-12.0, 8.0, 40_001)  # log tau
    tau = np.exp(u)
    out = {"log_w": [], "mu_m": [], "mu_v": [], "th_m": [], "th_v": []}
    for t in tau:
        d = s**2 + t**2
        cov = np.diag(d) + 25.0
        out["log_w"].append(stats.multivariate_normal.logpdf(y, np.zeros(8), cov))
        prec = 1 / 25.0 + np.sum(1 / d)
        m = np.sum(y / d) / prec
        out["mu_m"].append(m)
        out["mu_v"].append(1 / prec)
        # theta_j | mu, tau, y ~ N((y_j / s^2 + mu / t^2) / (1/s^2 + 1/t^2), 1/(...)),
        # averaged over mu | tau, y
        a = (1 / s**2) / (1 / s**2 + 1 / t**2)
        mean_th = a * y + (1 - a) * m
        var_th = 1 / (1 / s**2 + 1 / t**2) + (1 - a) ** 2 / prec
        out["th_m"].append(mean_th)
        out["th_v"].append(var_th)
    log_w = np.asarray(out["log_w"]) + stats.halfcauchy.logpdf(tau, scale=5.0) + u
    m = log_w.max()
    w = np.exp(log_w - m)
    norm = integrate.trapezoid(w, u)
    log_z = float(m + np.log(norm))
    p = w / norm

    def moment(f):
        return integrate.trapezoid(p[:, None] * f if np.ndim(f) > 1 else p * f, u, axis=0)

    mu_m = moment(np.asarray(out["mu_m"]))
    mu_sd = math.sqrt(moment(np.asarray(out["mu_v"]) + np.asarray(out["mu_m"]) ** 2) - mu_m**2)
    lt_m = moment(u)
    lt_sd = math.sqrt(moment(u**2) - lt_m**2)
    th_m = moment(np.asarray(out["th_m"]))
    th_sd = np.sqrt(moment(np.asarray(out["th_v"]) + np.asarray(out["th_m"]) ** 2) - th_m**2)
    # flat order of the sorted sites: mu, tau (log tau), theta[0..7]
    return log_z, np.concatenate([[mu_m, lt_m], th_m]), np.concatenate([[mu_sd, lt_sd], th_sd])


@functools.lru_cache(maxsize=None)
def eight_schools() -> BenchmarkTarget:
    sigma = jnp.asarray(SCHOOLS_SIGMA, jnp.float32)
    y = jnp.asarray(SCHOOLS_Y, jnp.float32)

    def model():
        eight_schools_model(sigma, y)

    log_density, dim, _ = _flat(model)
    log_z, mean, sd = _schools_quadrature()
    return BenchmarkTarget(name="eight_schools", dim=dim, model=model, log_density=log_density,
                           log_z=log_z, sample_exact=None, true_std=sd, init_scale=5.0,
                           mean=mean)


# --------------------------------------------------------------------------- logistic regression


@functools.lru_cache(maxsize=None)
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised features (569, 30) with an intercept column (569, 31), labels (569,)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    return np.concatenate([np.ones((x.shape[0], 1)), x], axis=1), data.target.astype(np.float64)


def logistic_model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)


@functools.lru_cache(maxsize=None)
def logistic_regression() -> BenchmarkTarget:
    xs, ys = breast_cancer()
    x = jnp.asarray(xs, jnp.float32)
    y = jnp.asarray(ys, jnp.float32)

    def model():
        logistic_model(x, y)

    log_density, dim, _ = _flat(model)
    ref = _reference("logistic_regression")
    return BenchmarkTarget(name="logistic_regression", dim=dim, model=model,
                           log_density=log_density, log_z=ref["log_z"], sample_exact=None,
                           true_std=np.asarray(ref["sd"]), init_scale=2.0,
                           mean=np.asarray(ref["mean"]))


# --------------------------------------------------------------------------- random walk

RW_Q, RW_R = 0.3, 0.5  # step and observation noise
RW_MISSING = (20, 30)


def random_walk_data(num: int = 50, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A path x (num,) and its noisy observations y (num,), NaN where missing."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(RW_Q * rng.standard_normal(num)) + rng.standard_normal()
    y = x + RW_R * rng.standard_normal(num)
    y[RW_MISSING[0]:RW_MISSING[1]] = np.nan
    return x, y


def random_walk_model(y, observed):
    n = y.shape[0]
    x0 = numpyro.sample("x0", dist.Normal(0.0, 1.0))
    steps = numpyro.sample("steps", dist.Normal(0.0, RW_Q).expand([n - 1]).to_event(1))
    x = jnp.concatenate([x0[None], x0 + jnp.cumsum(steps)])
    numpyro.deterministic("x", x)
    with numpyro.handlers.mask(mask=observed):
        numpyro.sample("y", dist.Normal(x, RW_R), obs=jnp.where(observed, y, 0.0))


def _random_walk_exact(num: int, y: np.ndarray):
    """Posterior mean / sd of the flat coordinates (steps, x0) and log Z, in closed form: the
    flat vector z = (steps (n-1), x0) is Gaussian a priori and y_obs = A z + noise."""
    n = num
    obs = ~np.isnan(y)
    # x = x0 + cumsum(steps): x = B z with z = (steps, x0) in sorted site order
    b = np.zeros((n, n))
    b[:, -1] = 1.0
    for t in range(1, n):
        b[t, : t] = 1.0
    prior_var = np.concatenate([np.full(n - 1, RW_Q**2), [1.0]])
    a = b[obs]
    cov_y = a @ np.diag(prior_var) @ a.T + RW_R**2 * np.eye(obs.sum())
    from scipy import stats

    log_z = float(stats.multivariate_normal.logpdf(y[obs], np.zeros(obs.sum()), cov_y))
    gain = np.diag(prior_var) @ a.T @ np.linalg.inv(cov_y)
    mean = gain @ y[obs]
    cov = np.diag(prior_var) - gain @ a @ np.diag(prior_var)
    return log_z, mean, np.sqrt(np.diag(cov))


@functools.lru_cache(maxsize=None)
def random_walk(num: int = 50) -> BenchmarkTarget:
    _, y_np = random_walk_data(num)
    observed = jnp.asarray(~np.isnan(y_np))
    y = jnp.asarray(np.nan_to_num(y_np), jnp.float32)

    def model():
        random_walk_model(y, observed)

    log_density, dim, _ = _flat(model)
    log_z, mean, sd = _random_walk_exact(num, y_np)
    return BenchmarkTarget(name=f"random_walk{num}", dim=dim, model=model,
                           log_density=log_density, log_z=log_z, sample_exact=None,
                           true_std=sd, init_scale=2.0, mean=mean)


# --------------------------------------------------------------------------- phi^4

PHI4_KAPPA, PHI4_LAMBDA, PHI4_L = 0.3, 0.022, 8


def phi4_log_density(x: jax.Array) -> jax.Array:
    """-S(phi) of the lattice phi^4 action on an L x L periodic lattice (x flat, L^2)."""
    phi = x.reshape(PHI4_L, PHI4_L)
    hop = phi * (jnp.roll(phi, 1, 0) + jnp.roll(phi, 1, 1))
    action = (-2 * PHI4_KAPPA * hop + (1 - 2 * PHI4_LAMBDA) * phi**2 + PHI4_LAMBDA * phi**4)
    return -jnp.sum(action)


@functools.lru_cache(maxsize=None)
def phi4() -> BenchmarkTarget:
    d = PHI4_L**2

    def model():
        x = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (d,)))
        numpyro.factor("log_rho", phi4_log_density(x))

    ref = _reference("phi4")
    return BenchmarkTarget(name="phi4", dim=d, model=model, log_density=phi4_log_density,
                           log_z=float("nan"), sample_exact=None,
                           true_std=np.full(d, ref["sd"]), init_scale=2.0,
                           mean=np.zeros(d))


def phi4_abs_magnetisation(x) -> float:
    """<|m|>, m = the lattice mean of phi, over draws x (n, L^2)."""
    return float(np.mean(np.abs(np.asarray(x).mean(axis=1))))


#: name -> constructor
MODEL_TARGETS = {
    "eight_schools": eight_schools,
    "logistic_regression": logistic_regression,
    "random_walk50": lambda: random_walk(50),
    "phi4": phi4,
}


# --------------------------------------------------------------------------- references


def _nuts(model, seed, num_warmup, num_samples, num_chains=4):
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(model), num_warmup=num_warmup, num_samples=num_samples,
                num_chains=num_chains, chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed))
    return mcmc


def compute_references() -> dict:
    """Long-run references: the logistic regression's log Z by importance sampling with a
    multivariate-t (5 dof) proposal fitted to NUTS draws; phi^4's <|m|> by NUTS."""
    from jax.flatten_util import ravel_pytree
    from scipy import special

    refs = {}
    xs, ys = breast_cancer()
    x, y = jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32)

    def lr():
        logistic_model(x, y)

    mcmc = _nuts(lr, 0, 2000, 5000)
    draws = np.asarray(jax.vmap(lambda s: ravel_pytree(s)[0])(mcmc.get_samples()), np.float64)
    mean, cov = draws.mean(0), np.cov(draws.T) * 1.2
    log_density, dim, _ = _flat(lr)
    nu = 5.0
    chol = np.linalg.cholesky(cov)
    log_norm = (special.gammaln((nu + dim) / 2) - special.gammaln(nu / 2)
                - 0.5 * dim * math.log(nu * math.pi) - np.sum(np.log(np.diag(chol))))
    rng = np.random.default_rng(1)
    batch = jax.jit(jax.vmap(log_density))
    log_ws = []
    for _ in range(100):
        z = rng.standard_normal((10_000, dim))
        g = rng.chisquare(nu, 10_000) / nu
        t = mean + (z @ chol.T) / np.sqrt(g)[:, None]
        q = np.linalg.solve(chol, (t - mean).T).T
        log_q = log_norm - 0.5 * (nu + dim) * np.log1p(np.sum(q**2, 1) / nu)
        log_ws.append(np.asarray(batch(jnp.asarray(t, jnp.float32)), np.float64) - log_q)
    lw = np.concatenate(log_ws)
    m = lw.max()
    w = np.exp(lw - m)
    refs["logistic_regression"] = {
        "log_z": float(m + np.log(w.mean())),
        "log_z_se": float(w.std() / (math.sqrt(w.size) * w.mean())),
        "ess": float(w.sum() ** 2 / (w.size * np.sum(w**2))),
        "mean": draws.mean(0).tolist(), "sd": draws.std(0).tolist(),
        "method": "IS, 10^6 multivariate-t(5) proposals fitted to 4 x 5000 NUTS draws (cov x 1.2)",
    }

    def phi():
        xx = numpyro.sample("x", dist.ImproperUniform(constraints.real, (), (PHI4_L**2,)))
        numpyro.factor("log_rho", phi4_log_density(xx))

    mcmc = _nuts(phi, 2, 2000, 25_000)
    samples = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    per_chain = [phi4_abs_magnetisation(c) for c in samples]
    refs["phi4"] = {
        "abs_magnetisation": float(np.mean(per_chain)),
        "abs_magnetisation_se": float(np.std(per_chain, ddof=1) / math.sqrt(len(per_chain))),
        "sd": float(samples.reshape(-1, PHI4_L**2).std()),
        "method": "NUTS, 4 chains x (2000 warm-up + 25000 draws); SE from the chain spread",
    }
    return refs


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["references"]:
        refs = compute_references()
        os.makedirs(os.path.dirname(_REFERENCES), exist_ok=True)
        with open(_REFERENCES, "w") as f:
            json.dump(refs, f, indent=1)
        print(json.dumps({k: {kk: v for kk, v in r.items() if kk not in ("mean", "sd")}
                          for k, r in refs.items()}, indent=1))
