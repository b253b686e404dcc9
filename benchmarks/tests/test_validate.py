"""The validate command's checks, reduced: a few seeds and simulations at small settings
(the full run is ``python -m numpyro_hjb validate``)."""

import jax
import numpy as np

from benchmarks import validate
from benchmarks.models import _schools_quadrature

SMALL = dict(num_particles=64, num_replicates=4, num_systems=8, refinements=1, control="off")


def test_eight_schools_exact_draws_match_the_quadrature_moments():
    _, mean, sd = _schools_quadrature()
    x = validate.eight_schools_exact(jax.random.PRNGKey(0), 20_000)
    se = sd / np.sqrt(x.shape[0])
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(x.std(0), sd, rtol=0.05)


def test_two_sample_tests_pass_on_one_law_and_fail_on_another():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 3)), rng.standard_normal((300, 3))
    assert validate._two_sample_tests(a, b, permutations=100)["passed"]
    assert not validate._two_sample_tests(a + 0.4, b, permutations=100)["passed"]


def test_rank_uniformity():
    rng = np.random.default_rng(1)
    assert validate._rank_uniformity(rng.integers(0, 100, 200), 99)[1] > 0.01
    assert validate._rank_uniformity(rng.integers(0, 30, 200), 99)[1] < 1e-6


def test_reduced_run_writes_the_table(tmp_path):
    cov = validate.coverage("scld", ["gauss2"], seeds=1, settings=SMALL)
    assert cov["gauss2"]["seeds"] == 1 and np.all(np.isfinite(cov["gauss2"]["z"]))
    s = validate.sbc("scld", num_simulations=2, num_draws=19, settings=SMALL)
    assert all(len(r["ranks"]) == 2 for r in s["params"].values())
    results = {"engines": {"scld": {"coverage": cov, "sbc": s}}}
    text = validate.markdown(results)
    assert "gauss2" in text and "theta0" in text
    validate.plot(results, str(tmp_path / "v.png"))
    assert (tmp_path / "v.png").stat().st_size > 0
