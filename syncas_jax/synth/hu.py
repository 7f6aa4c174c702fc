"""HU reassignment: give every labelled structure its non-contrast HU (design §1 step 1).

For each structure of the table, in order: with probability 0.5 add a uniform offset
in [−200, 200] HU to its value, dilate its mask in-plane (per axial slice) with a disk
of radius 2 px, and set those voxels to the value. Voxels outside every dilated
structure keep their CTA value.

Sequential overwriting equals a single pass: a voxel ends with the value of the *last*
structure (in table order) whose dilated mask covers it, i.e. of the largest table
position found in its disk neighbourhood. So we map labels to table positions (1…n,
0 elsewhere), take the in-plane grey-level dilation (max over the disk) once, and look
the value up.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from syncas_jax.synth.hu_table import REFERENCE

OFFSET_PROBABILITY = 0.5
MAX_OFFSET = 200.0  # HU
DILATION_RADIUS = 2  # px, in-plane disk


def disk_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """In-plane (dy, dx) offsets of the disk dy² + dx² ≤ radius² (skimage.morphology.disk)."""
    return tuple(
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if dy * dy + dx * dx <= radius * radius
    )


def draw_hu_values(
    key: jax.Array, table: tuple[tuple[int, str, float], ...] = REFERENCE, offsets: bool = True
) -> jnp.ndarray:
    """The HU given to each table entry for this draw, shape (n,): base HU + offset with p 0.5.

    offsets=False: the table's HU exactly (a realistic scan; the offsets are training augmentation).
    """
    base = jnp.asarray([hu for _, _, hu in table], jnp.float32)
    apply_key, offset_key = jax.random.split(key)
    apply = jax.random.bernoulli(apply_key, OFFSET_PROBABILITY if offsets else 0.0, base.shape)
    offset = jax.random.uniform(offset_key, base.shape, minval=-MAX_OFFSET, maxval=MAX_OFFSET)
    return base + jnp.where(apply, offset, 0.0)


def dilate_in_plane(values: jnp.ndarray, radius: int = DILATION_RADIUS) -> jnp.ndarray:
    """Grey-level dilation (max over a disk of `radius` px) of each axial slice of (Z, Y, X) ≥ 0 values."""
    _, h, w = values.shape
    padded = jnp.pad(values, ((0, 0), (radius, radius), (radius, radius)))
    out = values
    for dy, dx in disk_offsets(radius):
        out = jnp.maximum(out, padded[:, radius + dy : radius + dy + h, radius + dx : radius + dx + w])
    return out


@partial(jax.jit, static_argnames=("table", "offsets"))
def reassign_hu(
    image: jnp.ndarray,
    labels: jnp.ndarray,
    key: jax.Array,
    table: tuple[tuple[int, str, float], ...] = REFERENCE,
    offsets: bool = True,
) -> jnp.ndarray:
    """Non-contrast HU for labelled structures of a (Z, Y, X) CTA image (HU) → float32 (Z, Y, X) HU.

    labels: (Z, Y, X) integer label map; table: (id, name, HU) entries in order of application;
    offsets: draw the random per-structure offsets (False: every structure at its table HU).
    """
    if len(table) > 127:
        raise ValueError("at most 127 structures per table")
    position = jnp.zeros(labels.shape, jnp.int8)
    for index, (label_id, _, _) in enumerate(table):
        position = jnp.where(labels == label_id, jnp.int8(index + 1), position)
    # Barriers keep XLA from fusing the label comparisons into each shifted read of the dilation.
    position = jax.lax.optimization_barrier(position)
    position = jax.lax.optimization_barrier(dilate_in_plane(position))
    values = draw_hu_values(key, table, offsets)
    out = jnp.asarray(image, jnp.float32)
    for index in range(len(table)):
        out = jnp.where(position == index + 1, values[index], out)
    return out
