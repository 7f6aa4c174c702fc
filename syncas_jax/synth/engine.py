"""Render synthetic non-contrast CT views of one labelled CTA case (design §1).

Per view: HU reassignment (`hu`) → simulated CT acquisition of every axial slice
(`ct`) → plaque insertion (`plaques`; realistic renders insert them before the acquisition).
Views of a case differ only in their random
draws, all derived from one 64-bit case seed, itself derived from a global seed and the
case id, so a case renders identically on every run and independently of other cases.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import jax
import numpy as np

from syncas_jax.synth.ct import simulate_volume
from syncas_jax.synth.hu import reassign_hu
from syncas_jax.synth.hu_table import CORONARY_ID, get_table
from syncas_jax.synth.plaques import CALCIUM_LOADS, CalciumLoad, Centreline, coronary_centreline, insert_plaques

HuTable = tuple[tuple[int, str, float], ...]


@dataclass(frozen=True)
class View:
    """One rendering: image (Z, Y, X) float32 HU (not yet rounded) and its plaque records."""

    image: np.ndarray
    plaques: list[dict]


def case_seed(global_seed: int, case_id: str) -> int:
    """A 64-bit seed from (global seed, case id), stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"syncas-synth/{int(global_seed)}/{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


PLAQUE_STREAM = 2  # fold_in tag of a view's plaque key


def view_keys(seed: int, view: int) -> jax.Array:
    """The JAX key of one view of a case (see `split_view_key`)."""
    words = np.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], np.uint32)
    return jax.random.fold_in(jax.random.wrap_key_data(words), view)


def split_view_key(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(HU offsets, acquisition, plaques) keys of one view; offline and online synthesis both use it."""
    hu_key, ct_key = jax.random.split(key)
    return hu_key, ct_key, jax.random.fold_in(key, PLAQUE_STREAM)


def render_view(
    image: np.ndarray,
    labels: np.ndarray,
    seed: int,
    view: int,
    table: str | HuTable = "reference",
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    centreline: Centreline | None = None,
    chunk: int = 32,
    realistic: bool = False,
    dose: float = 1.0,
    plaques_first: bool | None = None,
    load: CalciumLoad = CALCIUM_LOADS["default"],
) -> View:
    """Render view number `view` of a case: image (Z, Y, X) HU, labels (Z, Y, X) int, spacing (z, y, x) mm.

    realistic: as a scanner shows the anatomy — every structure at its table HU (no random
    offsets, which are training augmentation); photon counts as always.
    dose: photon counts × dose (0.25: a quarter-dose scan, twice the noise std).
    plaques_first: insert the plaques into the HU volume before the acquisition, so its blur, noise and
    blooming act on them as a scanner's do (default: for realistic renders; training views paint them
    onto the acquired image, as the reference does). load: how many plaques and how many calcified.
    """
    table = get_table(table) if isinstance(table, str) else table
    coronary = np.asarray(labels) == CORONARY_ID
    if centreline is None:
        centreline = coronary_centreline(coronary, spacing)
    hu_key, ct_key, plaque_key = split_view_key(view_keys(seed, view))
    labels = np.asarray(labels, np.int16)
    reassigned = np.asarray(reassign_hu(np.asarray(image, np.float32), labels, hu_key, table, not realistic))
    before_acquisition = realistic if plaques_first is None else plaques_first
    if before_acquisition:
        with_plaques, records = insert_plaques(reassigned, coronary, centreline, spacing, plaque_key, load)
        return View(np.asarray(simulate_volume(with_plaques, ct_key, chunk=chunk, dose=dose)), records)
    acquired = simulate_volume(reassigned, ct_key, chunk=chunk, dose=dose)
    final, records = insert_plaques(acquired, coronary, centreline, spacing, plaque_key, load)
    return View(final, records)


def render_case(
    image: np.ndarray,
    labels: np.ndarray,
    seed: int,
    table: str | HuTable = "reference",
    *,
    views: int = 2,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    chunk: int = 32,
    realistic: bool = False,
    dose: float = 1.0,
    plaques_first: bool | None = None,
    load: CalciumLoad = CALCIUM_LOADS["default"],
) -> list[View]:
    """Render `views` independent synthetic NCCT views of a CTA case (image HU, labels int, both (Z, Y, X)).

    realistic, dose, plaques_first, load: see `render_view`.
    """
    centreline = coronary_centreline(np.asarray(labels) == CORONARY_ID, spacing)
    return [
        render_view(
            image, labels, seed, k, table, spacing=spacing, centreline=centreline, chunk=chunk, realistic=realistic,
            dose=dose, plaques_first=plaques_first, load=load,
        )
        for k in range(views)
    ]
