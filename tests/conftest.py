"""Shared test setup: a persistent XLA compilation cache so repeated compiles of the same step are cheap."""

from __future__ import annotations

import os
import tempfile

import jax

CACHE_DIR = os.environ.setdefault(
    "SYNCAS_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "syncas_jax_test_compile_cache")
)
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
