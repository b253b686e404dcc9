"""Fit the default engine on every device of several hosts (a cluster job).

Start one process per host, each with the same command; JAX connects them and
``jax.devices()`` then lists the devices of all hosts, over which the particle axis is
partitioned (``numpyro_hjb.sharding``). With SLURM, Open MPI or a Cloud TPU pod,
``jax.distributed.initialize()`` finds the coordinator and the process ids itself::

    srun --nodes=2 --ntasks-per-node=1 python examples/multi_host.py

Elsewhere give them explicitly, the same coordinator address on every host::

    python examples/multi_host.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0
    python examples/multi_host.py --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 1

On one machine, two CPU "hosts" are enough to try it::

    python examples/multi_host.py --coordinator localhost:1234 --num-processes 2 --process-id 0 &
    python examples/multi_host.py --coordinator localhost:1234 --num-processes 2 --process-id 1

Every process runs the same program on the same key and prints the same result; process 0
also prints the summary. The sequential engine's time budget is not used here: its decisions
would follow each process's own clock, so the fit's size is given (``--num-particles``,
``--num-systems``).
"""

import argparse

import jax


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coordinator", default=None, help="host:port of process 0")
    ap.add_argument("--num-processes", type=int, default=None)
    ap.add_argument("--process-id", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-particles", type=int, default=1024, help="particles per system")
    ap.add_argument("--num-systems", type=int, default=64, help="particle systems in all")
    args = ap.parse_args()
    # before any other JAX call
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)

    import numpy as np
    import numpyro
    import numpyro.distributions as dist

    import numpyro_hjb

    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def eight_schools(sigma, y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("J", len(sigma)):
            theta = numpyro.sample("theta", dist.Normal(mu, tau))
            numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    print(f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local of {jax.device_count()} devices")
    # Every process must run the same programs, so the fit's size is given rather than
    # chosen from each process's clock: num_particles per system and num_systems in all,
    # and no learned control (whose training is timed).
    fit = numpyro_hjb.fit(eight_schools, sigma, rng_key=jax.random.PRNGKey(args.seed),
                          model_kwargs={"y": y}, progress_bar=jax.process_index() == 0,
                          num_particles=args.num_particles, num_systems=args.num_systems,
                          control="off")
    ev = numpyro_hjb.log_evidence(fit)
    print(f"process {jax.process_index()}: log Z = {ev.log_z:.4f} ± {ev.log_z_se:.4f}")
    if jax.process_index() == 0:
        draws = fit.sample(jax.random.PRNGKey(args.seed + 1), 2000)
        for name in ("mu", "tau"):
            v = np.asarray(draws.samples[name])
            print(f"{name}: mean {v.mean():.3f}, sd {v.std():.3f}")


if __name__ == "__main__":
    main()
