"""save_fit / load_fit round trip and warm start (numpyro_hjb.io)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import numpyro_hjb
from numpyro_hjb.api import FitResult
from numpyro_hjb.io import apply_whitening, load_fit, save_fit
from numpyro_hjb.target import make_target


Y = jnp.array([0.3, -0.1, 0.8, 0.5, 0.2, 0.6])
# coordinate networks and the state-dependent score gate: all must survive the round trip
SETTINGS = dict(num_iterations=50, batch_size=64, num_steps=32, hidden=(32, 32),
                coordinate_hidden=4, score_gate="state")


def model(y=None):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("n", 6):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@pytest.fixture(scope="module")
def fitted():
    return numpyro_hjb.fit(model, engine="dis", whitening="laplace", model_kwargs={"y": Y},
                           progress_bar=False, **SETTINGS)


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("fits") / "fit.npz"
    save_fit(fitted, path)
    return path


def test_round_trip_gives_identical_proposals(fitted, saved):
    loaded = load_fit(saved, model, y=Y)
    assert isinstance(loaded, FitResult) and loaded.engine == "dis"
    assert loaded.config == fitted.config  # tuples (hidden) come back as tuples
    assert loaded.config["hidden"] == (32, 32)
    assert loaded.target.whitening == "laplace"
    np.testing.assert_array_equal(loaded.target.shift, fitted.target.shift)
    np.testing.assert_array_equal(loaded.target.scale_tril, fitted.target.scale_tril)
    for a, b in zip(jax.tree_util.tree_leaves(fitted.state), jax.tree_util.tree_leaves(loaded.state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(fitted.state) == jax.tree_util.tree_structure(loaded.state)
    np.testing.assert_array_equal(loaded.history["loss"], fitted.history["loss"])
    assert loaded.info["num_iterations"] == fitted.info["num_iterations"]
    key = jax.random.PRNGKey(11)
    x0, lw0 = fitted.propose(key, 8)
    x1, lw1 = loaded.propose(key, 8)
    np.testing.assert_allclose(x0, x1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lw0, lw1, rtol=1e-5, atol=1e-5)
    s0 = fitted.target.constrain_batch(x0)
    s1 = loaded.target.constrain_batch(x1)
    np.testing.assert_allclose(s0["sigma"], s1["sigma"], rtol=1e-5)


def test_file_is_pickle_free(saved):
    with np.load(saved, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        assert all(data[k].dtype != object for k in data.files)
    assert meta["engine"] == "dis" and meta["site_names"] == ["mu", "sigma"]


def test_warm_start_uses_the_loaded_parameters(saved):
    loaded = load_fit(saved, model, y=Y)
    # One iteration with a vanishing learning rate: the parameters stay the loaded ones.
    config = {**loaded.config, "num_iterations": 1, "learning_rate": 1e-12,
              "final_learning_rate": 1e-12}
    warm = numpyro_hjb.fit(loaded.target, engine="dis", init_state=loaded,
                           progress_bar=False, **config)
    for a, b in zip(jax.tree_util.tree_leaves(loaded.state), jax.tree_util.tree_leaves(warm.state)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # and the first loss is that of the trained sampler, far below a fresh start's
    assert warm.history["loss"][0] < loaded.history["loss"][0]


def test_mismatched_model_and_bad_files(saved, tmp_path):
    def other(y=None):
        numpyro.sample("a", dist.Normal(jnp.zeros(3), 1.0).to_event(1))

    with pytest.raises(ValueError, match="does not match"):
        load_fit(saved, other)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a numpyro_hjb fit"):
        load_fit(bad, model, y=Y)
    with pytest.raises(TypeError, match="fit_result"):
        save_fit({"params": 1}, tmp_path / "x.npz")


def test_truncated_corrupted_missing_and_other_data_files(saved, tmp_path):
    raw = saved.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.npz.*not a readable") as err:
        load_fit(truncated, model, y=Y)
    assert "allow_pickle" not in str(err.value)
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="noise.npz") as err:
        load_fit(noise, model, y=Y)
    assert "allow_pickle" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_fit(tmp_path / "missing.npz", model, y=Y)
    with pytest.warns(UserWarning, match="data differ"):
        load_fit(saved, model, y=Y + 1.0)


def test_apply_whitening_matches_whiten():
    base = make_target(model, y=Y)
    whitened = numpyro_hjb.whiten(base, "laplace")
    again = apply_whitening(base, whitened.shift, whitened.scale_tril, "laplace")
    x = jnp.array([0.3, -0.7])
    np.testing.assert_allclose(again.log_density(x), whitened.log_density(x), rtol=1e-6)
    np.testing.assert_allclose(again.to_unconstrained(x), whitened.to_unconstrained(x))
    with pytest.raises(ValueError, match="dimension"):
        apply_whitening(base, jnp.zeros(3), jnp.eye(3), "laplace")


def _as_old_format(path, version, **config_changes):
    """Rewrite a saved fit in the flat-dict format of versions 1-2 (flat config, dict state)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    flat = {}
    for key, value in meta.pop("settings").items():
        flat.update(value if isinstance(value, dict) and "__tuple__" not in value else {key: value})
    flat.update({"ou_sigma": 1.0, "exploration": 0.0, **config_changes})
    meta["config"] = flat
    meta["format_version"] = version
    params = meta["state_structure"]["children"][0]
    meta["state_structure"] = {"type": "dict", "keys": ["params"], "children": [params]}
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)


def test_version_1_pis_fits_load_on_the_uniform_grid(tmp_path):
    """Format 1 stored grid_power 2.0 for PIS fits, which ran on the uniform grid."""
    fit = numpyro_hjb.fit(model, engine="pis", model_kwargs={"y": Y}, progress_bar=False,
                          **SETTINGS)
    assert fit.config["grid_power"] == 2.0
    path = tmp_path / "old.npz"
    save_fit(fit, path)
    _as_old_format(path, 1, grid_power=2.0)
    loaded = load_fit(path, model, y=Y)
    assert loaded.config["grid_power"] == 1.0
    uniform = fit.settings.with_overrides({"grid_power": 1.0})
    key = jax.random.PRNGKey(2)
    np.testing.assert_allclose(loaded.propose(key, 8)[1],
                               FitResult(fit.engine, fit.target, fit.state, uniform, fit.history,
                                         fit.info).propose(key, 8)[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(loaded.propose(key, 8)[1], fit.propose(key, 8)[1])


def test_version_2_fits_load_and_retired_settings_fail_with_a_reason(fitted, tmp_path):
    path = tmp_path / "v2.npz"
    save_fit(fitted, path)
    _as_old_format(path, 2)
    loaded = load_fit(path, model, y=Y)
    assert loaded.config == fitted.config
    key = jax.random.PRNGKey(5)
    np.testing.assert_allclose(loaded.propose(key, 8)[1], fitted.propose(key, 8)[1], rtol=1e-5,
                               atol=1e-5)
    save_fit(fitted, path)
    _as_old_format(path, 2, ou_sigma=1.5)
    with pytest.raises(ValueError, match="ou_sigma=1.5.*retired"):
        load_fit(path, model, y=Y)
