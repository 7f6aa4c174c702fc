"""The few cross-process operations a multi-process (multi-host) run needs; no-ops in one process.

Every function here is collective: in a run of several JAX processes (`jax.distributed`),
every process must call it, in the same order, or they all wait.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def is_primary() -> bool:
    """True on the process that writes the run's files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process has reached the barrier called `name`."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(values: np.ndarray) -> np.ndarray:
    """(P, *values.shape): every process's `values` (same shape and 32-bit dtype everywhere), by process index."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values))


def differing_processes(values: np.ndarray) -> list[int]:
    """Indices of the processes whose `values` differ from process 0's (empty when all agree)."""
    everyone = gather(values)
    return [p for p in range(len(everyone)) if not np.array_equal(everyone[p], everyone[0])]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on at least one."""
    return bool(np.any(gather(np.asarray([flag], np.int32))))


def tree_from_primary(tree: Any) -> Any:
    """The primary's pytree of arrays as host arrays on every process; the others pass a tree of the
    same shapes and dtypes (arrays or jax.ShapeDtypeStruct) and wait for it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    local = jax.device_get(tree) if is_primary() else jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
    return multihost_utils.broadcast_one_to_all(local)


def from_primary(value: float | None) -> float | None:
    """The primary's `value` on every process (the others pass anything, e.g. None, and wait for it)."""
    if jax.process_count() == 1:
        return value
    words = np.asarray([np.nan if value is None else value], np.float64).view(np.uint32)  # exact without x64
    shared = float(np.asarray(tree_from_primary(words), np.uint32).view(np.float64)[0])
    return None if np.isnan(shared) else shared
