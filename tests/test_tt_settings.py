"""Engine 2's typed settings and state: every setting exercised with a non-default value,
errors before any work, a float32 NumPyro model, save/load and the flat-format migration."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import numpyro_hjb
import numpyro_hjb.tt.engine as engine  # registers the engine "tt"
from numpyro_hjb.settings import InvalidSettingError, UnknownSettingError
from numpyro_hjb.target import Target
from numpyro_hjb.tt.settings import TTSettings

FAST = dict(num_sampling_steps=12, horizon=5.0, t_max=20.0)


def _gauss2():
    """A correlated 2-D Gaussian with Z = 1."""
    prec = jnp.asarray([[1.5, 0.6], [0.6, 1.0]])
    half = 0.5 * math.log(4 * math.pi**2 / float(np.linalg.det(np.asarray(prec))))
    return Target.from_log_density(lambda x: -0.5 * x @ prec @ x - half, 2)


def _bimodal():
    return Target.from_log_density(
        lambda x: jnp.logaddexp(-((x[0] - 1.5) ** 2) / 0.5, -((x[0] + 1.5) ** 2) / 0.5), 1
    )


def _well():
    return Target.from_log_density(lambda x: -jnp.sum((x**2 - 1.0) ** 2), 1)


def _wide():
    return Target.from_log_density(lambda x: jnp.sum(-0.5 * (x / 2.0) ** 2), 1)


#: one tiny fit per settings group, with every option of the group away from its default
#: (other options only where the group needs them to be reached)
GROUP_FITS = {
    "route": (_bimodal, dict(formulation="hjb", degree=3, cutoff=3.5, cutoff_degree=20,
                             scale=1.5), {}),
    "cole_hopf": (_well, dict(ch_degree=24, ch_eps=1e-8, ch_noise_rel=1e-3, ch_nodes=2.5),
                  dict(formulation="cole_hopf")),
    "cross": (_gauss2, dict(cross_rank=2, cross_max_rank=4, cross_sweeps=3, cross_tol=1e-6), {}),
    "fallback": (_gauss2, dict(ls_fallback_tol=1e-20, ls_num_samples=500, ls_rank=3,
                               ls_sweeps=5), {}),
    "adaptivity": (_bimodal, dict(round_tol=1e-10, max_rank=8, max_degree=28, degree_step=2,
                                  degree_tol=1e-5), dict(scale=1.5)),
    "integration-dlra": (_gauss2, dict(integrator="dlra", dlra_rank=3, step_tol=1e-4,
                                       init_step=1e-3, max_step=1.0, min_step=1e-8,
                                       max_steps=5000, t_max=10.0, stop_tol=1e-8), {}),
    "integration-euler": (_gauss2, dict(integrator="euler"), {}),
    "sampling-ode": (_well, dict(sampler="ode", num_sampling_steps=10, horizon=6.0,
                                 grid_power=1.5), dict(formulation="cole_hopf", ch_degree=16)),
    "sampling-sde": (_gauss2, dict(sampler="sde", num_sampling_steps=10, horizon=6.0,
                                   grid_power=1.5), {}),
    "sampling-tweedie": (_well, dict(sampler="tweedie", jump_tol=1e-2, jump_newton=3),
                         dict(formulation="cole_hopf", ch_degree=32)),
    "scaling": (_wide, dict(scale_tol=0.1, scale_step=1.5, scale_min=0.5, scale_max=3.0),
                dict(formulation="cole_hopf", ch_degree=24)),
    "scaling-vector": (_gauss2, dict(scale=(1.2, 0.8)), {}),
    "runtime": (_gauss2, dict(batch_size=100), {}),
}


def test_every_setting_has_a_group_fit():
    exercised = {k for _, options, _ in GROUP_FITS.values() for k in options}
    defaults = TTSettings().flat()
    assert exercised == set(defaults)
    for _, options, _ in GROUP_FITS.values():
        assert all(options[k] != defaults[k] for k in options)


@pytest.mark.parametrize("group", sorted(GROUP_FITS))
def test_group_of_settings_runs_and_is_recorded(group):
    make_target, options, extra = GROUP_FITS[group]
    res = numpyro_hjb.fit(make_target(), engine="tt", progress_bar=False,
                          **{**FAST, **extra, **options})
    for name, value in options.items():
        assert res.settings.flat()[name] == value
    x, log_w = res.propose(jax.random.PRNGKey(1), 250)
    assert isinstance(log_w, np.ndarray) and log_w.shape == (250,)
    assert np.all(np.isfinite(log_w)) and np.all(np.isfinite(x))
    if group == "route":
        assert res.info["formulation"] == "hjb(cutoff=3.5)"
    if group == "fallback":
        assert np.isfinite(res.info["w0_holdout_ls"])  # the fallback ran
    if group == "scaling":
        assert float(res.state.scale[0]) >= 1.5 and res.info["scale_search"]
    if group == "scaling-vector":
        np.testing.assert_array_equal(res.state.scale, [1.2, 0.8])
    if group == "sampling-tweedie":
        assert res.state.final_jump is True and res.info["t_switch"] > 0


def test_misspelt_and_mistyped_settings_fail_before_any_work():
    calls = []

    def log_density(x):
        calls.append(1)
        return -0.5 * jnp.sum(x**2)

    target = Target.from_log_density(log_density, 1)
    with pytest.raises(UnknownSettingError, match="ch_degre") as err:
        numpyro_hjb.fit(target, engine="tt", progress_bar=False, ch_degre=32)
    assert "ch_degree" in str(err.value)  # the suggestion
    with pytest.raises(InvalidSettingError, match="ch_degree"):
        numpyro_hjb.fit(target, engine="tt", progress_bar=False, ch_degree=64.5)
    with pytest.raises(InvalidSettingError, match="scale"):
        numpyro_hjb.fit(target, engine="tt", progress_bar=False, scale="big")
    with pytest.raises(InvalidSettingError, match="scale_step"):
        numpyro_hjb.fit(target, engine="tt", progress_bar=False, scale_step=0.5)
    assert not calls


def test_typed_state_and_settings():
    res = numpyro_hjb.fit(_well(), engine="tt", progress_bar=False, formulation="cole_hopf",
                          ch_degree=24, **FAST)
    state = res.state
    assert isinstance(state, engine.TTState) and isinstance(res.settings, TTSettings)
    assert state.cole_hopf is True and isinstance(state.final_jump, bool)
    assert isinstance(state.h_eps, float) and state.h_eps > 0
    assert state.times.dtype == np.float64 and state.cores[0].shape[0] == state.times.shape[0]
    assert not jax.config.read("jax_enable_x64")  # the engine's x64 stays inside it


def test_save_load_round_trip_and_flat_format_migration(tmp_path):
    target = _gauss2()
    res = numpyro_hjb.fit(target, engine="tt", progress_bar=False, sampler="sde", **FAST)
    path = tmp_path / "fit.npz"
    numpyro_hjb.save_fit(res, path)
    loaded = numpyro_hjb.load_fit(path, target)
    assert loaded.settings == res.settings and loaded.state.cole_hopf is False
    key = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(loaded.propose(key, 50)[1], res.propose(key, 50)[1])

    # a fit saved as a flat settings dict and a dict state with float flags
    old_config = {**res.settings.flat(), "viscosity": 0.0, "scheme": "tt"}
    old_state = {"times": res.state.times, "cores": res.state.cores, "scale": res.state.scale,
                 "cole_hopf": np.asarray(0.0), "h_eps": np.asarray(0.0),
                 "final_jump": np.asarray(0.0)}
    settings, state = engine.TT_ENGINE.migrate(old_config, old_state)
    assert settings == res.settings
    assert state.cole_hopf is False and state.final_jump is False and state.h_eps == 0.0
    np.testing.assert_array_equal(state.cores[0], res.state.cores[0])
    with pytest.raises(ValueError, match="viscosity"):
        engine.TT_ENGINE.migrate({**old_config, "viscosity": 0.1}, old_state)


Y32 = np.array([0.3, -0.2, 0.5, 1.1], np.float32)
SIGMA32 = np.full(4, 0.7, np.float32)


def _float32_model(sigma, y):
    theta = numpyro.sample("theta", dist.Normal(0.0, 1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    numpyro.sample("y", dist.Normal(theta + mu, sigma), obs=y)


def test_float32_model_fits_in_the_float64_engine():
    """A NumPyro model with float32 data, unwhitened: the engine casts at its boundary. The
    posterior is Gaussian, so the HJB route is exact: log Z is the log marginal likelihood
    N(y; 0, sigma^2 I + 5 1 1^T) (the data's float32 values, in float64)."""
    res = numpyro_hjb.fit(_float32_model, SIGMA32, Y32, engine="tt", progress_bar=False, **FAST)
    y, s2 = Y32.astype(np.float64), SIGMA32.astype(np.float64) ** 2
    cov = np.diag(s2) + 5.0 * np.ones((4, 4))
    log_z = -0.5 * (y @ np.linalg.solve(cov, y) + np.linalg.slogdet(2 * np.pi * cov)[1])
    assert res.info["formulation"] == "hjb"
    assert res.info["log_z_readoff"] == pytest.approx(log_z, abs=1e-4)
    draws = res.sample(jax.random.PRNGKey(2), 250, num_proposals=1000)
    assert set(draws.samples) >= {"theta", "mu"}
    ev = draws.evidence  # from the same 1000 proposals
    assert ev.log_z == pytest.approx(log_z, abs=5 * ev.log_z_se + 1e-3)
