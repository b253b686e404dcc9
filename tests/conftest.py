"""Shared test setup: a persistent JAX compilation cache, so repeated runs skip recompiling."""

import os
import tempfile

import jax
import matplotlib
import pytest

matplotlib.use("Agg")
jax.config.update(
    "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "numpyro_hjb_jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Each test module's compiled code is released when it ends: a process that holds
    every executable of the whole suite runs out of memory maps."""
    yield
    jax.clear_caches()
