"""The learned-control engine: training, proposals, evidence and the fit API (docs/design.md s.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_hjb import Target, fit, get_engine
from numpyro_hjb.api import FitResult
from numpyro_hjb.control.engine import ControlState
from numpyro_hjb.control.losses import kl_loss, lv_loss
from numpyro_hjb.control.network import init_control
from numpyro_hjb.control.problem import build_problem

TINY = dict(num_iterations=150, batch_size=64, num_steps=16, log_every=50, hidden=(32, 32))


def settings_of(engine, **overrides):
    """The resolved settings of ``engine`` with overrides."""
    return get_engine(engine).make_settings(**overrides).resolve()

MEAN = jnp.array([2.0, -1.0])
SD = jnp.array([0.5, 1.5])


def gaussian_target(log_z=0.4):
    def log_rho(x):
        return log_z + jnp.sum(jax.scipy.stats.norm.logpdf(x, MEAN, SD))

    return Target.from_log_density(log_rho, 2)


@pytest.mark.parametrize("loss", ["lv", "kl"])
def test_loss_decreases_on_a_tiny_problem(loss):
    result = fit(gaussian_target(), engine="dds", loss=loss, progress_bar=False, **TINY)
    curve = result.history["loss"]
    assert curve.shape == (150,) and np.all(np.isfinite(curve))
    start, end = curve[:20].mean(), curve[-20:].mean()
    if loss == "lv":
        assert end < 0.5 * start, (start, end)
    else:  # KL loss = -ELBO / d: bounded below by -log Z / d
        assert end < start - 0.05, (start, end)


@pytest.mark.parametrize("conditioning", ["time", "noise"])
def test_untrained_control_gives_unbiased_evidence(conditioning):
    """E_F[w] = Z for the zero-initialised (reference) and a randomly perturbed control."""
    target = gaussian_target(log_z=0.4)
    config = settings_of("dis", **{**TINY, "num_steps": 16, "conditioning": conditioning})
    assert build_problem(target, config).scheme.final_var == pytest.approx(1.0)
    params = init_control(jax.random.PRNGKey(0), 2, (32, 32))
    params = jax.tree_util.tree_map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params
    )
    result = FitResult("dis", target, ControlState(params), config)
    est = result.log_evidence(jax.random.PRNGKey(2), num_samples=40_000)
    assert abs(est.log_z - 0.4) < 4 * est.log_z_se + 1e-3, est


def test_lv_and_kl_losses_run_and_are_finite():
    target = gaussian_target()
    for scheme in ("dis", "dds", "pis"):
        problem = build_problem(target, settings_of(scheme, **TINY))
        params = init_control(jax.random.PRNGKey(0), 2, (32, 32))
        for loss in (lv_loss, kl_loss):
            value, (log_w, mask) = loss(params, jax.random.PRNGKey(3), problem)
            assert np.isfinite(float(value)) and log_w.shape == (64,) and bool(mask.all())
        # LV against the reference (1 - lambda) F + lambda P: lambda = 0 is the plain variance.
        value0, (log_w, mask) = lv_loss(params, jax.random.PRNGKey(3), problem, target_weight=0.0)
        np.testing.assert_allclose(float(value0), float(np.var(log_w)) / 2, rtol=1e-4)
        value1, _ = lv_loss(params, jax.random.PRNGKey(3), problem, target_weight=0.7)
        grads = jax.grad(lambda p: lv_loss(p, jax.random.PRNGKey(3), problem, target_weight=0.7)[0])(
            params
        )
        assert np.isfinite(float(value1))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def test_fit_numpyro_model_end_to_end():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        numpyro.deterministic("mu2", 2 * mu)
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    y = jnp.array([0.5, 1.2, 0.8, 1.9, 1.1])
    result = fit(model, y, engine="dis", loss="lv", progress_bar=False, **TINY)
    draws = result.sample(jax.random.PRNGKey(0), 200)
    assert set(draws.samples) == {"mu", "sigma", "mu2"}
    assert draws.samples["mu"].shape == (200,)
    assert bool(jnp.all(draws.samples["sigma"] > 0))
    np.testing.assert_allclose(draws.samples["mu2"], 2 * draws.samples["mu"], rtol=1e-6)
    est = result.log_evidence(num_samples=2000)
    assert np.isfinite(est.log_z) and np.isfinite(est.log_z_se) and 0 < est.ess <= 1
    assert result.info["num_target_grad_evals"] == 150 * 64 * 16


def test_warm_start_uses_the_given_parameters():
    target = gaussian_target()
    first = fit(target, engine="dds", progress_bar=False, **TINY)
    again = fit(
        target, engine="dds", progress_bar=False, init_state=first, **{**TINY, "num_iterations": 50}
    )
    cold = fit(target, engine="dds", progress_bar=False, **{**TINY, "num_iterations": 50})
    assert again.history["loss"][:10].mean() < cold.history["loss"][:10].mean()


def test_lv_target_weight_stays_unbiased():
    """The LV loss against (1 - lambda) F + lambda P trains and keeps the evidence unbiased."""
    target = gaussian_target(log_z=0.4)
    result = fit(
        target, engine="dis", progress_bar=False,
        **{**TINY, "lv_target_weight": 1.0},
    )
    assert np.all(np.isfinite(result.history["loss"]))
    est = result.log_evidence(jax.random.PRNGKey(2), num_samples=20_000)
    assert abs(est.log_z - 0.4) < 4 * est.log_z_se + 1e-3, est
    with pytest.raises(ValueError, match="lv_target_weight"):
        fit(target, engine="dis", lv_target_weight=1.5, progress_bar=False)


def test_bad_settings_raise_clear_errors():
    target = gaussian_target()
    with pytest.raises(TypeError, match="num_iterationz"):
        fit(target, engine="dis", num_iterationz=3)
    with pytest.raises(ValueError, match="loss"):
        fit(target, engine="dis", loss="elbo", progress_bar=False)
    with pytest.raises(ValueError, match="engine"):
        fit(target, engine="nuts")
    with pytest.raises(ValueError, match="batch_size"):
        fit(target, engine="dis", batch_size=0, progress_bar=False)
    with pytest.raises(ValueError, match="conditioning"):
        fit(target, engine="dds", conditioning="sigma", progress_bar=False)
    with pytest.raises(ValueError, match="grid_power"):
        fit(target, engine="dds", grid_power=0.0, progress_bar=False)


@pytest.mark.parametrize("engine, coordinate_hidden", [("dds", 0), ("pis", 0), ("dds", 8)])
def test_noise_conditioned_control_trains(engine, coordinate_hidden):
    """conditioning='noise' (features of log sigma_t, MLP / sigma_t), also with the
    coordinate-wise networks: the LV loss falls and the evidence estimate stays within its
    error bars of the exact log Z."""
    result = fit(gaussian_target(), engine=engine, loss="lv", conditioning="noise",
                 coordinate_hidden=coordinate_hidden, progress_bar=False, **TINY)
    assert ("coord" in result.state.params) == (coordinate_hidden > 0)
    curve = result.history["loss"]
    assert np.all(np.isfinite(curve))
    assert curve[-20:].mean() < 0.5 * curve[:20].mean()
    est = result.log_evidence(jax.random.PRNGKey(3), num_samples=20_000)
    assert abs(est.log_z - 0.4) < 4 * est.log_z_se + 1e-3, est


def test_step_coefficient_interpolation_matches_numpy():
    """The loop-free interpolation used inside the sampler's scan (a GPU compile workaround)
    agrees with np.interp, inside and outside the knots."""
    from numpyro_hjb.control.problem import interp_ascending as _interp_ascending

    rng = np.random.default_rng(0)
    xs = np.sort(rng.uniform(0, 4, 12)).astype(np.float32)
    ys = rng.normal(size=12).astype(np.float32)
    ts = np.concatenate([xs, rng.uniform(-1, 5, 50).astype(np.float32)])
    got = jax.vmap(lambda t: _interp_ascending(t, jnp.asarray(xs), jnp.asarray(ys)))(ts)
    np.testing.assert_allclose(got, np.interp(ts, xs, ys), rtol=1e-5, atol=1e-6)


def test_divergence_is_reported_not_returned():
    from numpyro_hjb.control.engine import TrainingDivergedError

    with pytest.raises(TrainingDivergedError, match="diverged"):
        fit(gaussian_target(), engine="dis", learning_rate=float("inf"), progress_bar=False, **TINY)


def test_coordinate_networks_act_per_coordinate():
    """The coordinate-wise term is zero at initialisation, and once its output layer is
    perturbed, coordinate i of the control depends on y_i alone (diagonal Jacobian)."""
    from numpyro_hjb.control.network import apply_control

    dim = 4
    params = init_control(jax.random.PRNGKey(0), dim, (16, 16), 8, coordinate_hidden=8)
    y = jax.random.normal(jax.random.PRNGKey(1), (3, dim))
    base = jnp.zeros_like(y)
    assert np.all(np.asarray(apply_control(params, y, 0.3, base, 1.0, 8)) == 0.0)
    (w_in, b_in), mid, (w_out, b_out) = params["coord"]
    params["coord"] = [(w_in, b_in), mid,
                       (jax.random.normal(jax.random.PRNGKey(2), w_out.shape), b_out)]
    jac = jax.jacobian(lambda v: apply_control(params, v[None], 0.3, base[:1], 1.0, 8)[0])(y[0])
    jac = np.asarray(jac)
    assert np.all(np.abs(np.diag(jac)) > 1e-4)
    np.testing.assert_array_equal(jac - np.diag(np.diag(jac)), 0.0)


def test_state_gate_multiplies_the_score_feature_by_a_function_of_the_state():
    """score_gate='state': the control is affine in the score feature with a coefficient that
    depends on y (once the zero-initialised head is perturbed), and the head gets a gradient
    at initialisation, so training can move it."""
    from numpyro_hjb.control.network import apply_control

    dim = 3
    params = init_control(jax.random.PRNGKey(0), dim, (16, 16), 8, state_gate=True)
    y = jax.random.normal(jax.random.PRNGKey(1), (2, dim))
    base = jnp.ones_like(y)
    assert np.all(np.asarray(apply_control(params, y, 0.3, base, 1.0, 8)) == 0.0)

    def head_loss(w):
        p = {**params, "state_gate": (w, params["state_gate"][1])}
        return jnp.sum(apply_control(p, y, 0.3, base, 1.0, 8))

    assert float(jnp.max(jnp.abs(jax.grad(head_loss)(params["state_gate"][0])))) > 1e-3
    w_g = jax.random.normal(jax.random.PRNGKey(2), params["state_gate"][0].shape)
    params["state_gate"] = (w_g, params["state_gate"][1])
    u0 = apply_control(params, y, 0.3, 0.0 * base, 1.0, 8)
    coef = apply_control(params, y, 0.3, base, 1.0, 8) - u0
    np.testing.assert_allclose(apply_control(params, y, 0.3, 2.5 * base, 1.0, 8) - u0,
                               2.5 * coef, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(coef[0] - coef[1]))) > 1e-3  # differs between the two states


def test_state_gated_control_trains_and_stays_unbiased():
    result = fit(gaussian_target(), engine="dds", loss="lv", score_gate="state",
                 progress_bar=False, **TINY)
    assert "state_gate" in result.state.params
    curve = result.history["loss"]
    assert np.all(np.isfinite(curve)) and curve[-20:].mean() < 0.5 * curve[:20].mean()
    est = result.log_evidence(jax.random.PRNGKey(3), num_samples=20_000)
    assert abs(est.log_z - 0.4) < 4 * est.log_z_se + 1e-3, est
    with pytest.raises(ValueError, match="score_gate"):
        fit(gaussian_target(), engine="dds", score_gate="space", progress_bar=False)
