"""Data parallelism: a 1-D device mesh over a "data" axis, replicated state, sharded batches."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1D mesh over all (or the given) devices with axis 'data', grouped by process.

    Process p's devices form one contiguous block, in process order, so the global batch is
    the processes' local batches laid end to end (what the loader's shards assume).
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(sorted(devices, key=lambda d: d.process_index)), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Split the leading (batch) axis over the mesh's 'data' axis."""
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }  # multi-host: each process feeds its own slice of the global batch
