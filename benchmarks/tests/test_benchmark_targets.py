"""Benchmark targets against independent ground truth, and the metrics on known inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from benchmarks import metrics
from benchmarks.targets import TARGETS, get_target
from numpyro_hjb.target import make_target

NAMES = [*TARGETS, "gauss3"]


@pytest.mark.parametrize("name", NAMES)
def test_flat_density_matches_model(name):
    """The hand-written flat log density equals the NumPyro model's (constant included)."""
    t = get_target(name)
    mt = make_target(t.model)
    assert mt.dim == t.dim
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (16, t.dim)) + jnp.asarray(
        t.mean if t.mean is not None else 0.0
    )
    a = np.asarray(jax.jit(jax.vmap(t.log_density))(x))
    b = np.asarray(jax.jit(jax.vmap(mt.log_density))(x))
    np.testing.assert_allclose(a, b, rtol=2e-6, atol=2e-4)


def test_gmm9_log_z_by_grid():
    t = get_target("gmm9")
    g = np.linspace(-9.0, 9.0, 601)
    xx = jnp.asarray(np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2))
    dens = np.exp(np.asarray(jax.vmap(t.log_density)(xx), np.float64))
    z = dens.sum() * (g[1] - g[0]) ** 2
    assert abs(math.log(z) - t.log_z) < 1e-3


@pytest.mark.parametrize("name,delta,ref", [("manywell5", 4.0, -0.541056),
                                            ("manywell50", 2.0, 42.817243)])
def test_manywell_log_z(name, delta, ref):
    t = get_target(name)
    i1, _ = integrate.quad(lambda s: math.exp(-((s * s - delta) ** 2)), -8, 8, limit=200)
    k = 5
    expected = k * math.log(i1) + 0.5 * (t.dim - k) * math.log(2 * math.pi)
    assert abs(t.log_z - expected) < 1e-6
    assert abs(t.log_z - ref) < 1e-6


def test_manywell20_log_z_by_monte_carlo():
    """Z = E_q[rho / q] with q the exact 1-D marginals: exact => w is constant; instead use
    q = N(0, 1.5^2) per coordinate on the 1-D factor and the product structure."""
    t = get_target("manywell20")
    rng = np.random.default_rng(0)
    s = 1.5
    x = rng.normal(0.0, s, 400_000)
    w = np.exp(-((x**2 - 2.0) ** 2)) / stats.norm.pdf(x, 0.0, s)
    log_i = math.log(w.mean())
    se = w.std() / (math.sqrt(x.size) * w.mean())
    assert abs(20 * log_i - t.log_z) < 20 * 4 * se + 1e-3


@pytest.mark.parametrize("name", ["gauss2", "gauss5", "gauss20"])
def test_gauss_closed_form(name):
    t = get_target(name)
    lam = np.linalg.eigvalsh(t.cov)
    assert lam.max() / lam.min() >= 100 - 1e-6
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, t.dim)))
    ref = stats.multivariate_normal(t.mean, t.cov).logpdf(x)
    np.testing.assert_allclose(np.asarray(jax.vmap(t.log_density)(jnp.asarray(x))), ref,
                               rtol=1e-4, atol=1e-3)
    s = np.asarray(t.sample_exact(jax.random.PRNGKey(1), 50_000))
    np.testing.assert_allclose(s.mean(0), t.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(s.T), t.cov, atol=0.15)


@pytest.mark.parametrize("name", ["gmm9", "manywell5", "manywell50", "manywell20"])
def test_exact_sampler_moments(name):
    t = get_target(name)
    s = np.asarray(t.sample_exact(jax.random.PRNGKey(2), 100_000))
    assert s.shape == (100_000, t.dim)
    se = t.true_std / math.sqrt(s.shape[0])
    assert np.all(np.abs(s.mean(0)) < 6 * se)
    np.testing.assert_allclose(s.std(0), t.true_std, rtol=0.02)


def test_manywell_marginal_std_by_quadrature():
    t = get_target("manywell5")
    z, _ = integrate.quad(lambda s: math.exp(-((s * s - 4) ** 2)), -8, 8)
    m2, _ = integrate.quad(lambda s: s * s * math.exp(-((s * s - 4) ** 2)), -8, 8)
    assert abs(t.true_std[0] - math.sqrt(m2 / z)) < 1e-8
    # and the marginal of the exact sampler is the double-well density (KS test)
    x = np.asarray(t.sample_exact(jax.random.PRNGKey(5), 20_000))[:, 0]
    grid = np.linspace(-5, 5, 20_001)
    cdf = integrate.cumulative_trapezoid(np.exp(-((grid**2 - 4) ** 2)), grid, initial=0)
    cdf /= cdf[-1]
    assert stats.kstest(x, lambda v: np.interp(v, grid, cdf)).pvalue > 1e-3


def test_funnel_exact_sampler():
    t = get_target("funnel10")
    s = np.asarray(t.sample_exact(jax.random.PRNGKey(4), 50_000))
    assert abs(s[:, 0].std() - 3.0) < 0.05
    assert abs(s[:, 0].mean()) < 0.05
    u = s[:, 1:] / np.exp(0.5 * s[:, :1])  # standard normal given x1
    assert abs(u.std() - 1.0) < 0.01
    assert t.true_std[1] == pytest.approx(math.exp(2.25))


def test_unknown_target():
    with pytest.raises(ValueError, match="target"):
        get_target("nope")
    with pytest.raises(ValueError, match="target"):
        get_target("gauss0")


# --------------------------------------------------------------------------- metrics


def test_delta_log_z_and_std():
    assert metrics.delta_log_z(0.3, 0.5) == pytest.approx(0.2)
    x = np.random.default_rng(0).normal(size=(10_000, 3)) * np.array([1.0, 2.0, 3.0])
    assert metrics.delta_std(x, [1.0, 2.0, 3.0]) < 0.05
    assert metrics.delta_std(x, [2.0, 3.0, 4.0]) == pytest.approx(1.0, abs=0.05)


def test_sinkhorn_identical_and_shifted():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    same = metrics.sinkhorn_w2(x, x, num_points=200)
    assert same["debiased"] and same["eps"] == metrics.SINKHORN_EPS
    assert abs(same["w2"]) < 1e-4
    shifted = metrics.sinkhorn_w2(x, x + np.array([1.0, 0.0]), num_points=200)
    assert shifted["w2"] == pytest.approx(1.0, abs=0.05)  # W2^2 of a unit shift
    biased = metrics.sinkhorn_w2(x, x, num_points=200, debiased=False)
    assert biased["w2"] > same["w2"]
    with pytest.raises(ValueError, match="eps"):
        metrics.sinkhorn_w2(x, x, eps=0.0)
    with pytest.raises(ValueError, match="exact"):
        metrics.sinkhorn_w2(x, x[:, :1])


def test_mode_coverage_exact_samples():
    for name in ("gmm9", "manywell5", "manywell50"):
        t = get_target(name)
        s = t.sample_exact(jax.random.PRNGKey(0), 20_000)
        covered, total, tv = metrics.mode_coverage(s, t)
        assert covered == total == t.num_modes
        assert tv < 0.05
    t = get_target("gmm9")
    one_mode = np.tile(t.mode_centres[4], (100, 1))
    covered, total, tv = metrics.mode_coverage(one_mode, t)
    assert (covered, total) == (1, 9)
    assert tv == pytest.approx(8 / 9)
    with pytest.raises(ValueError, match="manywell20"):
        metrics.mode_coverage(np.zeros((3, 20)), get_target("manywell20"))


def test_mode_weights_identical_tv_zero():
    t = get_target("gmm9")
    balanced = np.repeat(t.mode_centres, 10, axis=0)
    assert metrics.mode_coverage(balanced, t) == (9, 9, 0.0)


def test_well_balance():
    t = get_target("manywell20")
    assert t.mode_of is None and t.num_wells == 20
    s = t.sample_exact(jax.random.PRNGKey(0), 20_000)
    assert metrics.well_balance(s, t.num_wells) < 0.02
    assert metrics.well_balance(np.abs(np.asarray(s)), t.num_wells) == pytest.approx(0.5)


# --------------------------------------------------------------------------- runner / CLI plumbing


def _row(target, method, settings, dlz):
    return {"target": target, "method": method, "settings": settings, "seeds": [0],
            "delta_log_z": dlz, "log_z_se": 0.01, "w2": 0.1, "delta_std": 0.2,
            "modes_covered": 9, "num_modes": 9, "mode_tv": 0.01, "device": "cpu (2 cores)"}


def test_write_results_upserts(tmp_path):
    from benchmarks.runner import write_results

    out = str(tmp_path / "b.md")
    write_results([_row("gmm9", "DIS-LV", "defaults", 0.5)], out)
    write_results([_row("gmm9", "DIS-LV", "defaults", 0.25), _row("gmm9", "SMC", "defaults", None)],
                  out)
    stored = write_results([], out)
    assert len(stored) == 2
    assert [r["delta_log_z"] for r in stored if r["method"] == "DIS-LV"] == [0.25]
    # another seed of the same settings is a row of its own, not a replacement
    stored = write_results([dict(_row("gmm9", "DIS-LV", "defaults", 0.75), seeds=[1])], out)
    assert [r["delta_log_z"] for r in stored if r["method"] == "DIS-LV"] == [0.25, 0.75]
    text = (tmp_path / "b.md").read_text()
    assert "| gmm9 | DIS-LV | defaults | 0.250 ± 0.010 |" in text
    assert "| gmm9 | SMC | defaults | – |" in text
    assert "eps = 0.05" in text and "2 CPU cores" in text
    from benchmarks.runner import format_row

    assert "| defaults (seed 2) |" in format_row(dict(_row("gmm9", "DIS-LV", "defaults", 0.1),
                                                      seeds=[2]))
    assert "| defaults (seeds 0,1) |" in format_row(dict(_row("gmm9", "DIS-LV", "defaults", 0.1),
                                                         seeds=[0, 1]))


def test_labels_and_settings_parsing():
    from benchmarks.cli import parse_settings
    from benchmarks.runner import method_label, run_benchmark, settings_label

    cfg = parse_settings(["num_iterations=50", "learning_rate=1e-3", "hidden=64,64",
                          "whitening=laplace", "flag=true", "sizes=(128, 128)", "one=[8]"])
    assert cfg == {"num_iterations": 50, "learning_rate": 1e-3, "hidden": (64, 64),
                   "whitening": "laplace", "flag": True, "sizes": (128, 128), "one": (8,)}
    assert method_label("dis", {"loss": "lv"}) == "DIS-LV"
    assert method_label("smc") == "SMC" and method_label("tt") == "TT-HJB"
    assert settings_label({"loss": "kl", "num_iterations": 50}) == "num_iterations=50"
    with pytest.raises(ValueError, match="--set"):
        parse_settings(["num_iterations"])
    with pytest.raises(ValueError, match="engine"):
        run_benchmark("gmm9", "bogus")


@pytest.mark.parametrize("name, stationary_var", [("gmm9", 1.0), ("manywell5", 1.0),
                                                   ("manywell50", 1.0), ("funnel10", 1.0),
                                                   ("funnel10", 9.0)])
def test_exact_ou_scores_satisfy_steins_identity(name, stationary_var):
    """The exact scores of p_t behind the discretisation floor and the regression check:
    under y ~ p_t (exact draws pushed through the OU transition with stationary law
    N(0, stationary_var I)), E[s(y)] = 0 and E[s(y) y^T] = -I (integration by parts), at a
    short and a long time."""
    from benchmarks.discretisation_floor import (
        manywell50_controls,
        funnel_score,
        gmm9_score,
        manywell_score,
    )

    score = {"gmm9": gmm9_score, "manywell5": lambda: manywell_score(4.0),
             "manywell50": lambda: manywell50_controls()[0],
             "funnel10": lambda: funnel_score(stationary_var=stationary_var)}[name]()
    bench = get_target(name)
    n = 4000
    for t in (0.1, 1.0):
        x0 = bench.sample_exact(jax.random.PRNGKey(1), n)
        a = np.exp(-t)
        y = a * x0 + np.sqrt(stationary_var * (1 - a**2)) * jax.random.normal(
            jax.random.PRNGKey(2), x0.shape)
        s = np.asarray(score(y, t))
        y = np.asarray(y)
        cross = s.T @ y / n
        # Monte Carlo tolerance: 5 standard errors of each mean
        se_mean = s.std(0) / np.sqrt(n)
        se_cross = (s * y).std(0) / np.sqrt(n)
        assert np.all(np.abs(s.mean(0)) < 5 * se_mean + 1e-3), (t, s.mean(0))
        assert np.all(np.abs(np.diag(cross) + 1) < 5 * se_cross + 1e-3), (t, np.diag(cross))


@pytest.mark.parametrize("name", ["manywell5", "manywell50"])
def test_manywell_pis_control_matches_the_bridge_estimates(name):
    """The quadrature PIS control of the many-well targets against the unbiased bridge
    estimates of control.warm_start on exact draws: E[u(y) g(y)] = E[u_hat g(y)] for g = 1
    and g = y."""
    from benchmarks.discretisation_floor import (
        manywell50_controls,
        manywell_pis_control,
    )
    from numpyro_hjb.control.warm_start import brownian_control_targets

    bench = get_target(name)
    n, times = 20_000, jnp.array([0.05, 0.5])
    x_end = bench.sample_exact(jax.random.PRNGKey(3), n)
    ks, y, u_hat = brownian_control_targets(jax.random.PRNGKey(4), times, bench.log_density,
                                            x_end, n, 2.0, 1.0)
    if name == "manywell5":
        control = manywell_pis_control(4.0, 2.0, 1.0)
    else:
        control = manywell50_controls()[1]
    for k in range(2):
        sel = np.asarray(ks) == k
        yk, hk = np.asarray(y)[sel], np.asarray(u_hat)[sel]
        uk = np.asarray(control(jnp.asarray(yk), times[k]))
        for g in (np.ones_like(yk), yk):
            diff = (uk - hk) * g
            se = diff.std(0) / np.sqrt(len(diff))
            assert np.all(np.abs(diff.mean(0)) < 5 * se + 1e-3), (k, diff.mean(0), se)


def test_training_curve_keeps_block_means():
    """The bench row's training curve: block means over at most max_points blocks, ignoring
    non-finite values, ending at the last iteration."""
    from benchmarks.runner import training_curve

    loss = np.arange(1000, dtype=float)
    loss[3] = np.nan
    curve = training_curve({"loss": loss, "ess": np.ones(1000)}, max_points=200)
    assert curve["iteration"][-1] == 1000 and len(curve["iteration"]) == 200
    assert curve["loss"][0] == pytest.approx(np.mean([0, 1, 2, 4]))
    assert curve["loss"][-1] == pytest.approx(np.mean(np.arange(995, 1000)))
    assert curve["ess"] == [1.0] * 200
    assert training_curve({}) == {}


def test_score_without_exact_samples():
    """A model target has no exact sampler (``sample_exact`` None, as eight schools and the
    logistic regression): the runner scores its draws by the sd error alone, with no W2 and
    no exact samples, instead of failing after the fit."""
    import dataclasses

    from benchmarks.runner import _score

    target = dataclasses.replace(get_target("gauss2"), sample_exact=None)
    x = np.random.default_rng(0).normal(size=(500, 2)) * target.true_std
    scores, exact = _score(target, x, jax.random.PRNGKey(0))
    assert exact is None and scores["w2"] is None
    assert scores["delta_std"] == pytest.approx(metrics.delta_std(x, target.true_std))
    scores, exact = _score(get_target("gauss2"), x, jax.random.PRNGKey(0))
    assert exact.shape == (2000, 2) and np.isfinite(scores["w2"])
