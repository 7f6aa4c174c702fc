"""Checkpoint folders shared by convert, train and infer.

A checkpoint is a folder:
  state/      orbax StandardCheckpointer pytree ({"params", "batch_stats", ...})
  meta.json   model config ({"ngf", "depth", "norm"}) plus free-form metadata

`save_checkpoint` writes the new folder beside the old one and swaps them only after the
new one is complete, so an interrupted or failed save (disk full) leaves the previous
checkpoint intact.

Several processes (multi-host training): every process calls `save_checkpoint` and
`load_checkpoint` with the same arguments, on a folder all of them see (a shared file
system). The state is saved as host (numpy) arrays, so orbax writes one copy, from the
primary process; the primary alone prepares and swaps the folders while the others wait
at barriers. A checkpoint does not record how many processes wrote it: any number can
resume it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.multihost import barrier, is_primary

STATE_DIR = "state"
META_FILE = "meta.json"


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_checkpoint(directory: str | os.PathLike, state: Any, meta: dict[str, Any]) -> None:
    """Save a pytree `state` and JSON `meta` to `directory`, replacing it only once complete (collective)."""
    directory = Path(directory).absolute()
    new = directory.with_name(directory.name + ".new")
    old = directory.with_name(directory.name + ".old")
    if is_primary():
        for stale in (new, old):
            if stale.exists():
                shutil.rmtree(stale)
        new.mkdir(parents=True)
    barrier("checkpoint: folder ready")
    try:
        checkpointer = _checkpointer()
        checkpointer.save(new / STATE_DIR, jax.device_get(state))
        checkpointer.wait_until_finished()
        if is_primary():
            (new / META_FILE).write_text(json.dumps(meta, indent=2))
    except BaseException:
        if is_primary():
            shutil.rmtree(new, ignore_errors=True)
        raise
    if is_primary():
        if directory.exists():
            os.replace(directory, old)
        os.replace(new, directory)
        shutil.rmtree(old, ignore_errors=True)
    barrier("checkpoint: saved")


def is_checkpoint(directory: str | os.PathLike) -> bool:
    directory = Path(directory)
    return (directory / STATE_DIR).is_dir() and (directory / META_FILE).is_file()


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not is_checkpoint(directory):
        raise InputError(directory, f"not a syncas_jax checkpoint (expected {STATE_DIR}/ and {META_FILE} inside)")
    try:
        return json.loads((directory / META_FILE).read_text())
    except json.JSONDecodeError as error:
        raise InputError(directory / META_FILE, f"corrupt checkpoint metadata: {error}") from None


def _dtype(x: Any) -> np.dtype:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def load_checkpoint(directory: str | os.PathLike, target: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Restore (state, meta) as host arrays. With `target` (arrays or jax.ShapeDtypeStruct leaves) the tree
    structure, shapes and dtypes are checked against it."""
    directory = Path(directory).absolute()
    meta = load_meta(directory)
    try:
        if target is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), _dtype(x)), target)
            state = _checkpointer().restore(directory / STATE_DIR, abstract)
        else:
            state = _checkpointer().restore(directory / STATE_DIR)
    except Exception as error:
        raise InputError(directory, f"cannot restore checkpoint ({type(error).__name__}: {error})") from None
    return state, meta
