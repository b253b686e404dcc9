"""Shared test setup: a persistent JAX compilation cache, so repeated runs skip recompiling."""

import os
import tempfile

import jax
import matplotlib

matplotlib.use("Agg")
jax.config.update(
    "jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "numpyro_hjb_jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
