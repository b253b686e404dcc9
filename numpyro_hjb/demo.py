"""Demo: a conjugate Bayesian linear regression with a closed-form posterior and evidence.

Model (known noise sigma, prior scale tau)::

    w ~ N(0, tau^2 I_p),   y | w ~ N(X w, sigma^2 I_n).

Exact answers: posterior N(m, S) with S = (X^T X / sigma^2 + I / tau^2)^{-1},
m = S X^T y / sigma^2, and evidence p(y) = N(y; 0, sigma^2 I + tau^2 X X^T). The latent
site is unconstrained, so log Z of the engine (docs/design.md s.1) is exactly log p(y).

Run ``python -m numpyro_hjb.demo`` (or ``python -m numpyro_hjb demo``).
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np

__all__ = ["main", "make_data", "exact_posterior", "exact_log_evidence", "regression_model"]

SIGMA = 0.5  # known noise scale
TAU = 2.0  # prior scale of the weights
DATA_SEED = 20240601
WEIGHTS = np.array([1.0, -2.0, 0.5])

#: the MCMC kernel of each engine
KERNELS = {"scld": "SCLD", "dis": "DIS", "dds": "DDS", "pis": "PIS", "tt": "TTHJB"}


def make_data(n: int = 30, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix X (n, 3) = [1, u, u^2 - 1/3] with u ~ U(-1, 1), and y = X w + noise,
    from a fixed seed (the same data every run)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, n)
    x = np.stack([np.ones(n), u, u**2 - 1.0 / 3.0], axis=1)
    y = x @ WEIGHTS + SIGMA * rng.normal(size=n)
    return x, y


def regression_model(x, y=None):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    p = x.shape[1]
    w = numpyro.sample("w", dist.Normal(jnp.zeros(p), TAU).to_event(1))
    numpyro.deterministic("fit_at_zero", w[0] - w[2] / 3.0)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.asarray(x) @ w, SIGMA), obs=y)


def exact_posterior(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean m and covariance S of w (closed form, see the module docstring)."""
    prec = x.T @ x / SIGMA**2 + np.eye(x.shape[1]) / TAU**2
    cov = np.linalg.inv(prec)
    return cov @ x.T @ y / SIGMA**2, cov


def exact_log_evidence(x: np.ndarray, y: np.ndarray) -> float:
    """log N(y; 0, sigma^2 I + tau^2 X X^T)."""
    n = y.shape[0]
    cov = SIGMA**2 * np.eye(n) + TAU**2 * x @ x.T
    sign, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (y @ np.linalg.solve(cov, y) + logdet + n * np.log(2 * np.pi)))


def main(args) -> dict:
    """Run ``MCMC(KERNEL(model))`` for ``args.engine`` (default: the default engine, with
    its defaults) on the demo regression; print the posterior summary and log Z ± SE against
    the exact values, and save a plot.

    ``args`` needs ``engine``, ``seed`` and ``no_progress``; optional ``out`` (plot path,
    default ``demo.png``), ``num_samples``, ``num_warmup`` and ``time_budget`` (seconds of the
    sequential engine's fit). Returns the numbers printed.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from numpyro.infer import MCMC

    from . import mcmc as kernels
    from .api import DEFAULT_ENGINE, log_evidence

    engine = getattr(args, "engine", None) or DEFAULT_ENGINE
    if engine not in KERNELS:
        raise ValueError(f"engine must be one of {sorted(KERNELS)}, got {engine!r}")
    seed = int(getattr(args, "seed", 0) or 0)
    progress = not bool(getattr(args, "no_progress", False))
    out = getattr(args, "out", None) or "demo.png"
    num_samples = int(getattr(args, "num_samples", None) or 2000)
    num_warmup = int(getattr(args, "num_warmup", None) or 200)
    budget = getattr(args, "time_budget", None)
    overrides = {"time_budget": float(budget)} if budget and engine == "scld" else {}

    x, y = make_data()
    m_exact, s_exact = exact_posterior(x, y)
    log_z_exact = exact_log_evidence(x, y)
    print(f"numpyro_hjb demo: Bayesian linear regression, n={len(y)}, p={x.shape[1]}, "
          f"engine={engine!r}, seed={seed}")
    t0 = time.perf_counter()
    kernel = getattr(kernels, KERNELS[engine])(regression_model, progress_bar=progress, **overrides)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=1,
                progress_bar=progress)
    key_mcmc, key_ev = jax.random.split(jax.random.PRNGKey(seed))
    mcmc.run(key_mcmc, x, y)
    wall = time.perf_counter() - t0
    mcmc.print_summary()
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    extra = mcmc.get_extra_fields()
    acc = float(np.mean(np.asarray(extra["accept_prob"])))
    ev = log_evidence(mcmc, rng_key=key_ev, num_samples=4096)

    print("\nposterior of w: engine vs exact")
    print(f"{'':>6} {'mean':>9} {'exact':>9} {'sd':>9} {'exact':>9}")
    w = samples["w"]
    for i in range(x.shape[1]):
        print(f"{'w[' + str(i) + ']':>6} {w[:, i].mean():9.4f} {m_exact[i]:9.4f} "
              f"{w[:, i].std():9.4f} {np.sqrt(s_exact[i, i]):9.4f}")
    z = (ev.log_z - log_z_exact) / ev.log_z_se if ev.log_z_se > 0 else float("nan")
    print(f"\nlog Z = {ev.log_z:.4f} ± {ev.log_z_se:.4f}  (exact {log_z_exact:.4f}; "
          f"error {ev.log_z - log_z_exact:+.4f} = {z:+.1f} SE)")
    print(f"{ev.method}; ESS {ev.ess:.3f}; acceptance {acc:.3f}; wall time {wall:.1f} s")

    fig, axes = plt.subplots(1, x.shape[1] + 1, figsize=(4 * (x.shape[1] + 1), 3.2))
    for i in range(x.shape[1]):
        ax = axes[i]
        ax.hist(w[:, i], bins=40, density=True, alpha=0.5, label=f"MCMC({KERNELS[engine]})")
        sd = np.sqrt(s_exact[i, i])
        grid = np.linspace(m_exact[i] - 4 * sd, m_exact[i] + 4 * sd, 200)
        ax.plot(grid, np.exp(-0.5 * ((grid - m_exact[i]) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)),
                "k", label="exact")
        ax.set_title(f"w[{i}]")
    axes[0].legend(fontsize=8)
    hist = kernel.fit_result.history
    systems = getattr(kernel.fit_result.state, "log_z", None)
    if systems is not None:
        axes[-1].hist(np.asarray(systems), bins=30, alpha=0.6, label="log Z of each particle system")
        axes[-1].axvline(log_z_exact, color="k", ls="--", label="exact log Z")
        axes[-1].legend(fontsize=8)
    elif "elbo" in hist and len(hist["elbo"]):
        axes[-1].plot(hist["elbo"], lw=0.8, label="training ELBO")
        axes[-1].axhline(log_z_exact, color="k", ls="--", label="exact log Z")
        axes[-1].set_ylim(log_z_exact - 5, log_z_exact + 1)
        axes[-1].set_xlabel("iteration")
        axes[-1].legend(fontsize=8)
    axes[-1].set_title(f"log Z = {ev.log_z:.3f} ± {ev.log_z_se:.3f}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"plot saved to {out}")
    return {
        "log_z": ev.log_z, "log_z_se": ev.log_z_se, "log_z_exact": log_z_exact,
        "posterior_mean": w.mean(0), "posterior_mean_exact": m_exact,
        "accept_prob": acc, "wall_s": wall, "plot": out,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m numpyro_hjb.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--engine", default=None, choices=sorted(KERNELS),
                        help="engine (default: the default engine)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of the sequential engine's fit (default: its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", default="demo.png", help="plot path (default demo.png)")
    return parser


def default_args(**overrides) -> SimpleNamespace:
    """The command line defaults as a namespace (for ``main`` from Python)."""
    return SimpleNamespace(**{**vars(_parser().parse_args([])), **overrides})


if __name__ == "__main__":
    main(_parser().parse_args())
