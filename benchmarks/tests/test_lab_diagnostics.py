"""The lab's diagnostics of the learned control (benchmarks/weight_budget.py,
benchmarks/score_regression.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_hjb import Target, fit

TINY = dict(num_iterations=150, batch_size=64, num_steps=16, log_every=50, hidden=(32, 32))


def test_weight_budget_splits_the_log_weight_variance():
    """Steps in every window once: the windows' var + cov-with-rest and the terminal term's
    add up to Var(log w) of the same paths."""
    from benchmarks.weight_budget import weight_budget

    bimodal = Target.from_log_density(
        lambda x: jnp.logaddexp(-0.5 * jnp.sum((x - 2) ** 2), -0.5 * jnp.sum((x + 2) ** 2)), 2
    )
    result = fit(bimodal, engine="dds", progress_bar=False, **{**TINY, "num_iterations": 20})
    out = weight_budget(result, jax.random.PRNGKey(3), num=512, edges=(0.5, 0.05))
    assert [w["t"][0] for w in out["windows"]] == [0.5, 0.05, 0.0]
    assert sum(w["steps"] for w in out["windows"]) == result.config["num_steps"]
    total = out["terminal"]["var"] + out["terminal"]["cov_with_rest"] + sum(
        w["var"] + w["cov_with_rest"] for w in out["windows"]
    )
    assert out["var_log_w"] > 1e-3
    assert total == pytest.approx(out["var_log_w"], rel=1e-6)


def test_score_regression_learns_the_exact_control():
    """The capacity check regresses the network on gmm9's closed-form optimal control: the
    path-KL-weighted error falls, and the regressed sampler beats the untrained reference."""
    from benchmarks.score_regression import regress_on_exact_control

    settings = {"num_steps": 32, "hidden": (32, 32)}
    trained = regress_on_exact_control("gmm9", settings, iterations=200, batch=64)
    untrained = regress_on_exact_control("gmm9", settings, iterations=1, batch=64)
    curve = np.asarray(trained["loss_curve"])
    assert np.all(np.isfinite(curve)) and curve[-20:].mean() < 0.3 * curve[:20].mean()
    assert trained["ess"] > 2 * untrained["ess"], (trained["ess"], untrained["ess"])
