"""The particle axis across devices: on two forced host devices the batches really are split
over both, and the results match a one-device run with the same key: up to round-off for a
learned-control engine (training and proposals), within the error bars for the particle
systems of the sequential engine (round-off can flip one of their discrete resampling or
accept decisions, after which a system's path differs).

The checks run in a fresh process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the flag must be set before JAX
starts, so this process, which has one device, cannot run them itself)."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from numpyro_hjb.sharding import resolve_devices, sharding_for

SCRIPT = textwrap.dedent("""
    import jax, numpy as np, numpyro, numpyro.distributions as dist
    import numpyro_hjb
    from numpyro_hjb.annealing.programs import make_program
    from numpyro_hjb.annealing.reference import prior_base
    from numpyro_hjb.annealing.smc import MassPath
    from numpyro_hjb.sharding import use_devices

    assert len(jax.devices()) == 2, jax.devices()
    Y = np.array([0.3, -0.1, 0.8, 0.5, 0.2, 0.6], np.float32)

    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("n", 6):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    key = jax.random.PRNGKey(1)
    out = {}
    # the default engine: its replicate systems split over the devices, same result
    scld = dict(num_particles=64, num_replicates=4, num_systems=8, refinements=1, control="off")
    for n in (2, 1):
        fit = numpyro_hjb.fit(model, rng_key=key, progress_bar=False, model_kwargs={"y": Y},
                              devices=n, **scld)
        ev = numpyro_hjb.log_evidence(fit)
        out[f"scld{n}"] = (ev.log_z, ev.log_z_se)
        with use_devices(jax.devices()[:n]):
            program = make_program(fit.target, fit.settings, "prior")
            run = program((), MassPath.particles(fit.target.dim), key)
        out[f"scld_devices{n}"] = len(run.x.sharding.device_set)
    # a learned-control engine: training batches and proposals split over the devices
    dds = dict(num_iterations=20, batch_size=32, num_steps=8, hidden=(8, 8))
    for n in (2, 1):
        fit = numpyro_hjb.fit(model, engine="dds", rng_key=key, progress_bar=False,
                              model_kwargs={"y": Y}, devices=n, **dds)
        x, log_w = fit.propose(jax.random.PRNGKey(2), 64)
        out[f"dds{n}"] = (np.asarray(x), np.asarray(log_w),
                          np.asarray(jax.tree_util.tree_leaves(fit.state)[0]))
        out[f"dds_devices{n}"] = len(x.sharding.device_set)
    print("DEVICES", out["scld_devices2"], out["scld_devices1"], out["dds_devices2"],
          out["dds_devices1"])
    # the same systems from the same keys; a resampling or accept decision that round-off
    # flips makes a system's path diverge, so the two runs agree within their errors
    (lz2, se2), (lz1, se1) = out["scld2"], out["scld1"]
    assert abs(lz2 - lz1) < 4 * (se1**2 + se2**2) ** 0.5, (lz2, se2, lz1, se1)
    for a, b in zip(out["dds2"], out["dds1"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    print("OK")
""")


def test_sharded_run_matches_one_device_and_spans_both():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DEVICES 2 1 2 1" in proc.stdout, proc.stdout[-2000:]
    assert "OK" in proc.stdout


def test_devices_argument_is_checked():
    assert resolve_devices(None) == tuple(jax.devices())
    assert resolve_devices(1) == tuple(jax.devices()[:1])
    with pytest.raises(ValueError, match="devices must be between 1 and"):
        resolve_devices(len(jax.devices()) + 1)
    with pytest.raises(TypeError, match="devices must be"):
        resolve_devices("gpu")
    with pytest.raises(TypeError, match="devices must be"):
        resolve_devices(True)
    # one device, or a batch that does not divide evenly: no sharding
    assert sharding_for(8, jax.devices()[:1]) is None
