"""Checkpoint folders shared by convert, train and infer.

A checkpoint is a folder:
  state/      orbax StandardCheckpointer pytree ({"params", "batch_stats", ...})
  meta.json   model config ({"ngf", "depth", "norm"}) plus free-form metadata

`save_checkpoint` writes the new folder beside the old one and swaps them only after the
new one is complete, so an interrupted or failed save (disk full) leaves the previous
checkpoint intact.
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

STATE_DIR = "state"
META_FILE = "meta.json"


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_checkpoint(directory: str | os.PathLike, state: Any, meta: dict[str, Any]) -> None:
    """Save a pytree `state` and JSON `meta` to `directory`, replacing it only once complete."""
    directory = Path(directory).absolute()
    new = directory.with_name(directory.name + ".new")
    old = directory.with_name(directory.name + ".old")
    for stale in (new, old):
        if stale.exists():
            shutil.rmtree(stale)
    new.mkdir(parents=True)
    try:
        checkpointer = _checkpointer()
        checkpointer.save(new / STATE_DIR, jax.device_get(state))
        checkpointer.wait_until_finished()
        (new / META_FILE).write_text(json.dumps(meta, indent=2))
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if directory.exists():
        os.replace(directory, old)
    os.replace(new, directory)
    shutil.rmtree(old, ignore_errors=True)


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


def load_checkpoint(directory: str | os.PathLike, target: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Restore (state, meta). With `target` the tree structure and shapes are checked against it."""
    directory = Path(directory).absolute()
    meta = load_meta(directory)
    try:
        if target is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), target)
            state = _checkpointer().restore(directory / STATE_DIR, abstract)
        else:
            state = _checkpointer().restore(directory / STATE_DIR)
    except Exception as error:
        raise InputError(directory, f"cannot restore checkpoint ({type(error).__name__}: {error})") from None
    return state, meta
