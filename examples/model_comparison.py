"""Bayesian model comparison on the 1974 Motor Trend car road tests (``mtcars``, 32 cars).

Two linear regressions of fuel consumption (mpg) on standardised predictors:

    M1: mpg ~ N(alpha + beta_wt * wt,                  sigma)
    M2: mpg ~ N(alpha + beta_wt * wt + beta_hp * hp,   sigma)
    alpha ~ N(20, 10),  beta ~ N(0, 5),  sigma ~ HalfNormal(5).

log Z of each model (and the log Bayes factor log Z2 - log Z1) from our engine (fresh
proposals of the fitted diffusion sampler, docs/design.md s.5) and from BlackJAX's adaptive
tempered SMC (HMC moves; log Z from the sum of the incremental normalising constants,
its SE from the spread over independent SMC runs).

The data ship with the package: ``numpyro_hjb/data/mtcars.csv`` (Henderson & Velleman
1981, from Motor Trend 1974; the table R distributes as ``datasets::mtcars``).

Run: ``python examples/model_comparison.py`` (about 3-5 minutes on 2 CPU cores).
"""

import argparse
import csv
import importlib.resources
import time

import blackjax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
from blackjax.smc import resampling
from blackjax.smc.base import extend_params

import numpyro_hjb
from numpyro_hjb import log_evidence

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PRIOR = dict(alpha_loc=20.0, alpha_scale=10.0, beta_scale=5.0, sigma_scale=5.0)


def load_mtcars():
    path = importlib.resources.files("numpyro_hjb") / "data" / "mtcars.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "model"}


def design(data, names):
    x = np.stack([data[n] for n in names], axis=1)
    return (x - x.mean(0)) / x.std(0)


def regression(x, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(PRIOR["alpha_loc"], PRIOR["alpha_scale"]))
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[1]), PRIOR["beta_scale"]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(PRIOR["sigma_scale"]))
    with numpyro.plate("cars", x.shape[0]):
        numpyro.sample("mpg", dist.Normal(alpha + x @ beta, sigma), obs=y)


def smc_log_z(x, y, key, num_particles=2000, num_runs=8):
    """Adaptive tempered SMC (BlackJAX) in the unconstrained space (alpha, beta, log sigma);
    returns the log Z of each of ``num_runs`` independent runs."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    p = x.shape[1]

    def logprior(th):
        alpha, beta, log_s = th[0], th[1:1 + p], th[-1]
        return (dist.Normal(PRIOR["alpha_loc"], PRIOR["alpha_scale"]).log_prob(alpha)
                + dist.Normal(0.0, PRIOR["beta_scale"]).log_prob(beta).sum()
                + dist.HalfNormal(PRIOR["sigma_scale"]).log_prob(jnp.exp(log_s)) + log_s)

    def loglik(th):
        alpha, beta, log_s = th[0], th[1:1 + p], th[-1]
        return dist.Normal(alpha + x @ beta, jnp.exp(log_s)).log_prob(y).sum()

    # HMC moves with a diagonal mass matched to the posterior scales of (alpha, beta, log s)
    inv_mass = jnp.concatenate([jnp.full(1 + p, 0.3), jnp.array([0.02])])
    smc = blackjax.adaptive_tempered_smc(
        logprior, loglik, blackjax.hmc.build_kernel(), blackjax.hmc.init,
        extend_params(dict(step_size=0.3, inverse_mass_matrix=inv_mass,
                           num_integration_steps=8)),
        resampling.systematic, target_ess=0.5, num_mcmc_steps=10,
    )

    def one_run(key):
        k_init, k_run = jax.random.split(key)
        ka, kb, ks = jax.random.split(k_init, 3)
        n = num_particles
        particles = jnp.concatenate([
            PRIOR["alpha_loc"] + PRIOR["alpha_scale"] * jax.random.normal(ka, (n, 1)),
            PRIOR["beta_scale"] * jax.random.normal(kb, (n, p)),
            jnp.log(PRIOR["sigma_scale"] * jnp.abs(jax.random.normal(ks, (n, 1)))),
        ], axis=1)

        def cond(carry):
            return carry[0].tempering_param < 1.0

        def body(carry):
            state, log_z, key, steps = carry
            key, sub = jax.random.split(key)
            state, info = smc.step(sub, state)
            return state, log_z + info.log_likelihood_increment, key, steps + 1

        state, log_z, _, steps = jax.lax.while_loop(
            cond, body, (smc.init(particles), 0.0, k_run, 0))
        return log_z, steps

    log_z, steps = jax.jit(jax.vmap(one_run))(jax.random.split(key, num_runs))
    return np.asarray(log_z), np.asarray(steps)


def main(seed=0, progress=True, out="model_comparison.png"):
    data = load_mtcars()
    y = data["mpg"]
    models = {"M1: wt": design(data, ["wt"]), "M2: wt + hp": design(data, ["wt", "hp"])}
    key = jax.random.PRNGKey(seed)
    results = {}
    for i, (name, x) in enumerate(models.items()):
        k_fit, k_ev, k_smc = jax.random.split(jax.random.fold_in(key, i), 3)
        t0 = time.perf_counter()
        fitted = numpyro_hjb.fit(regression, x, y, rng_key=k_fit, progress_bar=progress)
        ev = log_evidence(fitted, rng_key=k_ev, num_samples=16384)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        smc_z, smc_steps = smc_log_z(x, y, k_smc)
        t_smc = time.perf_counter() - t0
        results[name] = dict(ev=ev, smc=smc_z, hist=fitted.history)
        print(f"{name:>12}: ours log Z = {ev.log_z:9.4f} ± {ev.log_z_se:.4f} "
              f"(ESS {ev.ess:.3f}, k-hat {ev.khat:.2f}; {t_ours:.0f} s)   "
              f"SMC log Z = {smc_z.mean():9.4f} ± {smc_z.std(ddof=1) / np.sqrt(len(smc_z)):.4f} "
              f"({len(smc_z)} runs, {smc_steps.mean():.0f} tempering steps; {t_smc:.0f} s)")
    (n1, r1), (n2, r2) = results.items()
    bf = r2["ev"].log_z - r1["ev"].log_z
    bf_se = float(np.hypot(r2["ev"].log_z_se, r1["ev"].log_z_se))
    se = lambda z: z.std(ddof=1) / np.sqrt(len(z))  # noqa: E731
    bf_smc = r2["smc"].mean() - r1["smc"].mean()
    bf_smc_se = float(np.hypot(se(r2["smc"]), se(r1["smc"])))
    z = abs(bf - bf_smc) / np.hypot(bf_se, bf_smc_se)
    print(f"\nlog Bayes factor (M2 vs M1): ours {bf:.4f} ± {bf_se:.4f}   "
          f"SMC {bf_smc:.4f} ± {bf_smc_se:.4f}")
    print(f"difference = {z:.2f} combined SE (criterion < 2): {'PASS' if z < 2 else 'FAIL'}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        axes[0].plot(r["hist"]["elbo"], lw=0.8, label=f"{name} training ELBO")
        axes[0].axhline(r["smc"].mean(), ls="--", lw=0.8, c="k")
    axes[0].set_ylim(min(r["smc"].mean() for r in results.values()) - 6,
                     max(r["smc"].mean() for r in results.values()) + 2)
    axes[0].set_xlabel("iteration")
    axes[0].legend(fontsize=8)
    labels = ["ours", "SMC"]
    vals = [bf, bf_smc]
    errs = [2 * bf_se, 2 * bf_smc_se]
    axes[1].errorbar([0, 1], vals, yerr=errs, fmt="o", capsize=6)
    axes[1].set_xticks([0, 1], labels)
    axes[1].set_xlim(-0.5, 1.5)
    axes[1].set_title("log Bayes factor M2 vs M1 (± 2 SE)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot saved to {out}")
    return bf, bf_se, bf_smc, bf_smc_se


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", default="model_comparison.png")
    a = parser.parse_args()
    main(a.seed, not a.no_progress, a.out)
