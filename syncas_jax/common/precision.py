"""Compute precision: the one rule that turns a `precision` setting into a dtype.

"auto" depends on the backend and on what runs: training computes in bfloat16 on GPU/TPU
(float32 parameters, optimiser and losses), inference in bfloat16 on TPU only (on an H100
bfloat16 was no faster than float32/TF32 for this network, and less exact); everything
runs in float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("auto", "float32", "bfloat16")
_AUTO_BFLOAT16 = {"train": ("gpu", "tpu"), "infer": ("tpu",)}


def compute_dtype(precision: str, purpose: str = "train", backend: str | None = None) -> Any:
    """jnp.float32 or jnp.bfloat16 for `precision` ("auto", "float32", "bfloat16").

    purpose: "train" or "infer" (only "auto" depends on it); backend: JAX's default when None.
    """
    import jax
    import jax.numpy as jnp

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        backend = backend or jax.default_backend()
        return jnp.bfloat16 if backend in _AUTO_BFLOAT16[purpose] else jnp.float32
    return jnp.dtype(precision)
