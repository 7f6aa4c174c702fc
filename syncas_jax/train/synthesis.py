"""Which synthesis a run trains with (`"synthesis"`: offline or online) and what that changes in the loop.

Offline: the NCCT cache's stored views. Online: a CTA cache (`python -m syncas_jax.preprocess --cta`),
its crops loaded by `data.cta_loader` and rendered inside the jitted steps by `data.online`: two
training views with HU offsets per patch and step, and one realistic view (no offsets, a fixed key per
validation batch) for validation, so pseudo-Dice stays comparable between epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.data.cache import cache_kind, read_dataset_info
from syncas_jax.train.config import Config
from syncas_jax.train.step import Render

CACHE_FOR_SYNTHESIS = {"offline": "ncct", "online": "cta"}
HOW_TO_BUILD = {"ncct": "python -m syncas_jax.preprocess -i SYNTH_DIR", "cta": "python -m syncas_jax.preprocess --cta"}
NAMES = {"ncct": "an NCCT cache", "cta": "a CTA cache"}


def wanted_cache(config: Config) -> str:
    """The cache kind ("ncct" or "cta") the run's synthesis setting reads."""
    return CACHE_FOR_SYNTHESIS[config.data.synthesis]


def check_cache_kind(config: Config) -> None:
    """InputError naming the cache when a cache of data_dir does not suit the run: another kind than the
    synthesis setting reads, another spacing or orientation than the config's; online synthesis takes one cache."""
    data = config.data
    if data.synthesis == "online" and len(data.caches) > 1:
        raise InputError(None, f"synthesis 'online' trains on one CTA cache; data_dir names {len(data.caches)}")
    for cache in data.caches:
        check_one_cache(config, cache)


def check_one_cache(config: Config, cache: str) -> None:
    data = config.data
    if not Path(cache).is_dir():
        return
    kind, wanted = cache_kind(cache), wanted_cache(config)
    if kind != wanted:
        raise InputError(
            cache,
            f"is {NAMES.get(kind, kind)}; synthesis '{data.synthesis}' needs {NAMES[wanted]} ({HOW_TO_BUILD[wanted]})",
        )
    if wanted == "cta":
        from syncas_jax.data.cta_loader import read_cta_geometry

        cached = read_cta_geometry(cache).spacing
        if not np.allclose(cached, data.spacing):
            raise InputError(cache, f"CTA cache spacing {list(cached)} differs from the config's {list(data.spacing)}")
        return
    if not (Path(cache) / "dataset.json").exists():
        return  # a cache written without dataset.json (tests): nothing recorded to compare
    info = read_dataset_info(cache)
    if info.get("spacing") is not None and not np.allclose(info["spacing"], data.spacing):
        raise InputError(cache, f"cache spacing {info['spacing']} differs from the config's {list(data.spacing)}")
    orientation = info.get("orientation", "canonical")
    if orientation != data.orientation:
        raise InputError(
            cache, f"cache made in '{orientation}' orientation, the config trains in '{data.orientation}' "
            "(preprocess and train must agree: --keep-orientation on both, or on neither)"
        )  # fmt: skip


def loader_parts(config: Config, train_ids: list[str], val_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Extra keyword arguments (source, batch_fn) of the train and validation loaders; empty offline."""
    data = config.data
    if data.synthesis != "online":
        return {}, {}
    from syncas_jax.data.cta_loader import cta_loader_parts

    def parts(ids: list[str]) -> dict[str, Any]:
        source, batch_fn, _ = cta_loader_parts(data.caches[0], ids, data.patch_size)
        return {"source": source, "batch_fn": batch_fn}

    return parts(train_ids), parts(val_ids)


def online_renderers(config: Config) -> tuple[Render | None, Render | None]:
    """(train, validation) renderers: two views with HU offsets, one realistic view; (None, None) offline."""
    if config.data.synthesis != "online":
        return None, None
    from syncas_jax.data.cta_loader import read_cta_geometry
    from syncas_jax.data.online import OnlineRenderer

    geometry = read_cta_geometry(config.data.caches[0])
    return OnlineRenderer(geometry), OnlineRenderer(geometry, views=1, offsets=False)
