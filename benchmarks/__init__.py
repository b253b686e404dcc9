"""Benchmarks of numpyro_hjb (not installed with the package): targets with exact ground
truth, metrics, the runner behind ``python -m numpyro_hjb bench``, the peers, and the lab's
diagnostics. Everything here uses the package's public API and documented internals."""
