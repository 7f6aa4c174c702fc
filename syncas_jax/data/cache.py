"""The training cache: preprocessed cases on disk, and the folder run that builds it.

Input layout (output of ``syncas_jax.synth``) for case ``{id}``:
``{id}.view{k}.img.nii.gz`` for k = 0..K-1 (int16 HU) and ``{id}.label.nii.gz``
(uint8 binary coronary mask; its presence marks a finished case). Case ids are the
names of ``*.label.nii.gz`` with the suffix stripped. A plain ImageCAS-style
``{id}.img.nii.gz`` is accepted as a single view.

Per case: read (z, y, x) arrays (`syncas_jax.common.nifti.read_volume`) → reorient to the
canonical axes (`syncas_jax.data.orientation`, as inference does) → crop, window, resample
(`syncas_jax.data.transforms`) → branch labels: 6-connected components of the coronary mask
(label > 0, after resampling), renumbered by size: largest = 1, next = 2, …, background 0;
ties are broken by the first voxel in C (z, y, x) order. int16.

Cache layout: see `syncas_jax.data.layout` (views.npy, label.npy, fg.npy, json per case;
dataset.json). Every file is written atomically (temporary name, then rename). The
properties JSON holds `transforms`' properties plus the canonical affine, the file's axis
codes (``source_axcodes``), ``axis_order`` "zyx", the number of views and branches and the
source files.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import cc3d
import numpy as np

from syncas_jax.common.errors import InputError
from syncas_jax.common.files import atomic_path, write_json
from syncas_jax.common.nifti import Volume, check_same_grid, read_volume, strip_nifti_suffix
from syncas_jax.data.layout import CACHE_FORMAT, PATCH_SIZE, TARGET_SPACING, cache_paths
from syncas_jax.data.orientation import orient
from syncas_jax.data.transforms import HU_CENTER, HU_CLIP, HU_SCALE, preprocess_hu

MAX_FOREGROUND_LOCATIONS = 20_000
FOREGROUND_SEED = 1234


# ------------------------------------------------------------------------ branch labels


def branch_labels(mask: np.ndarray) -> np.ndarray:
    """int16 (Z, Y, X): 6-connected components of mask > 0 ranked by size (largest 1), background 0.

    Equal sizes are ordered by their first voxel in C order.
    """
    mask = np.asarray(mask) > 0
    components = cc3d.connected_components(mask, connectivity=6)
    flat = components.ravel()
    where = np.flatnonzero(flat)
    if where.size == 0:
        return np.zeros(mask.shape, np.int16)
    ids, first, sizes = np.unique(flat[where], return_index=True, return_counts=True)
    if ids.size > np.iinfo(np.int16).max:
        raise ValueError(f"{ids.size} coronary components do not fit int16 branch labels")
    rank = np.lexsort((where[first], -sizes))  # by size descending, then first voxel
    lookup = np.zeros(int(ids.max()) + 1, np.int16)
    lookup[ids[rank]] = np.arange(1, ids.size + 1, dtype=np.int16)
    return lookup[components]


def foreground_locations(label: np.ndarray, limit: int = MAX_FOREGROUND_LOCATIONS) -> np.ndarray:
    """int32 (M, 3) (z, y, x) indices of label > 0; at most `limit`, a seeded subsample in C order."""
    coords = np.argwhere(np.asarray(label) > 0).astype(np.int32)
    if len(coords) > limit:
        keep = np.random.default_rng(FOREGROUND_SEED).choice(len(coords), limit, replace=False)
        coords = coords[np.sort(keep)]
    return coords.reshape(-1, 3)


# -------------------------------------------------------------------- cases


class PreprocessedCase(NamedTuple):
    """views: float32 (V, Z, Y, X); label: int16 (Z, Y, X) branch ids; foreground: int32 (M, 3); properties."""

    views: np.ndarray
    label: np.ndarray
    foreground: np.ndarray
    properties: dict[str, Any]


def preprocess_case(
    views: Sequence[Volume],
    label: Volume,
    target_spacing: Sequence[float] = TARGET_SPACING,
    orientation: str = "canonical",
) -> PreprocessedCase:
    """K views (HU) + binary coronary label on one grid → cache arrays and properties.

    orientation: "canonical" turns the case to LPS first (design §11); "file" keeps the file's axes (§12).

    Raises InputError (naming the file) when views or label disagree in shape or affine.
    An empty label is allowed (properties["empty_label"] = True; no foreground locations).
    """
    if not views:
        raise InputError(label.path, "no image views for this label")
    for other in (*views[1:], label):
        check_same_grid(views[0], other)
    (label, move), views = orient(label, orientation), [orient(v, orientation)[0] for v in views]
    hu = np.stack([np.asarray(v.array, np.float32) for v in views])
    data, mask, properties = preprocess_hu(hu, views[0].spacing, target_spacing, np.asarray(label.array) > 0)
    branches = branch_labels(mask)
    foreground = foreground_locations(branches)
    properties.update(
        affine=np.asarray(views[0].affine, float).tolist(),
        source_axcodes=list(move.source_axcodes),
        orientation=orientation,
        num_views=len(views),
        num_branches=int(branches.max()),
        num_foreground_voxels=int(np.count_nonzero(branches)),
        empty_label=bool(not np.any(np.asarray(label.array) > 0)),
        source_files=[v.path for v in views] + [label.path],
    )
    return PreprocessedCase(data, branches, foreground, properties)


# -------------------------------------------------------------------------- the cache


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array))


def write_cached_case(cache_dir: str | os.PathLike, case_id: str, case: PreprocessedCase) -> None:
    """Write one case atomically; the properties JSON goes last and marks the case done."""
    paths = cache_paths(cache_dir, case_id)
    paths["properties"].unlink(missing_ok=True)  # a crash mid-rewrite leaves the case "not done"
    _save_npy(case.views.astype(np.float32, copy=False), paths["views"])
    _save_npy(case.label.astype(np.int16, copy=False), paths["label"])
    _save_npy(case.foreground.astype(np.int32, copy=False).reshape(-1, 3), paths["fg"])
    write_json({**case.properties, "case_id": case_id, "cache_format": CACHE_FORMAT}, paths["properties"])


def is_cached(cache_dir: str | os.PathLike, case_id: str, kind: str = "ncct") -> bool:
    """True when every file of the case exists (properties written last)."""
    return all(p.exists() for p in cache_paths(cache_dir, case_id, kind).values())


def cached_case_ids(cache_dir: str | os.PathLike, kind: str = "ncct") -> list[str]:
    """Sorted ids of the finished cases in a cache folder."""
    ids = (p.name[: -len(".json")] for p in Path(cache_dir).glob("*.json") if p.name != "dataset.json")
    return sorted(i for i in ids if is_cached(cache_dir, i, kind))


def cache_kind(cache_dir: str | os.PathLike) -> str:
    """ "ncct" or "cta" as dataset.json says; "ncct" for a folder without dataset.json (or without the key)."""
    if not (Path(cache_dir) / "dataset.json").exists():
        return "ncct"
    return str(read_dataset_info(cache_dir).get("kind", "ncct"))


def read_properties(cache_dir: str | os.PathLike, case_id: str) -> dict[str, Any]:
    path = cache_paths(cache_dir, case_id)["properties"]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(path, f"cannot read case properties ({error})") from None


def read_dataset_info(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """dataset.json of a cache folder (spacing, cases, num_views, patch_size)."""
    path = Path(cache_dir) / "dataset.json"
    if not path.exists():
        raise InputError(path, "not found: run `python -m syncas_jax.preprocess` first")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise InputError(path, f"not valid JSON ({error})") from None


def write_dataset_info(
    cache_dir: str | os.PathLike,
    target_spacing: Sequence[float],
    source: str = "synthetic",
    orientation: str = "canonical",
) -> dict[str, Any]:
    """(Re)write dataset.json from the finished cases in the folder.

    source: "synthetic" (views rendered by `synth`) or "labelled" (real scans, one view each: `data.labelled`);
    orientation: the cases' orientation convention (`data.orientation.ORIENTATIONS`).
    """
    cases = cached_case_ids(cache_dir)
    views = {c: int(read_properties(cache_dir, c).get("num_views", 0)) for c in cases}
    counts = sorted(set(views.values()))
    info = {
        "cache_format": CACHE_FORMAT,
        "kind": "ncct",
        "source": source,
        "spacing": [float(s) for s in target_spacing],
        "axis_order": "zyx",
        "orientation": orientation,
        "num_views": counts[0] if len(counts) == 1 else counts,
        "cases": cases,
        "num_cases": len(cases),
        "patch_size": list(PATCH_SIZE),
        "normalization": {"clip_hu": list(HU_CLIP), "subtract": HU_CENTER, "divide": HU_SCALE},
        "labels": {"-1": "outside the volume (loader padding)", "0": "background", "1..": "branches by size"},
    }
    write_json(info, Path(cache_dir) / "dataset.json")
    return info


# ---------------------------------------------------------------------- input folders


_VIEW = re.compile(r"^(?P<id>.+)\.view(?P<k>\d+)\.img\.nii(\.gz)?$")


@dataclass
class CaseFiles:
    """The NIfTI files of one input case: views in k order, the coronary label."""

    case_id: str
    views: list[Path]
    label: Path


def find_cases(input_dir: str | os.PathLike) -> list[CaseFiles]:
    """Cases of a synth/ImageCAS folder, sorted by id. A case without any image is returned with no views."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found")
    labels = sorted(p for p in input_dir.iterdir() if re.search(r"\.label\.nii(\.gz)?$", p.name))
    views: dict[str, dict[int, Path]] = {}
    for p in input_dir.iterdir():
        match = _VIEW.match(p.name)
        if match:
            views.setdefault(match["id"], {})[int(match["k"])] = p
    cases = []
    for label in labels:
        case_id = strip_nifti_suffix(label.name)[: -len(".label")]
        found = views.get(case_id, {})
        if found:
            paths = [found[k] for k in sorted(found)]
        else:
            paths = [p for p in (input_dir / f"{case_id}.img.nii.gz", input_dir / f"{case_id}.img.nii") if p.exists()]
        cases.append(CaseFiles(case_id, paths, label))
    return cases


@dataclass
class CaseResult:
    case_id: str
    status: str  # "done", "skipped" or "failed"
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def cache_case(case_id: str, work: Callable[[], list[str]]) -> CaseResult:
    """Run `work` (read, preprocess and write one case; returns its warnings) as one CaseResult.

    Bad input (InputError) and unexpected errors become a "failed" result naming the problem,
    so one case never stops a folder's run.
    """
    try:
        notes = work()
    except InputError as error:
        return CaseResult(case_id, "failed", str(error))
    except Exception as error:  # keep the run going; report the unexpected error with its type
        return CaseResult(case_id, "failed", f"unexpected {type(error).__name__}: {error}")
    return CaseResult(case_id, "done", warnings=notes)


def process_case_files(
    files: CaseFiles,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float],
    overwrite: bool = False,
    orientation: str = "canonical",
) -> CaseResult:
    """Read, preprocess and cache one case; never raises for bad input (the result says what failed)."""
    if not overwrite and is_cached(output_dir, files.case_id):
        return CaseResult(files.case_id, "skipped")

    def work() -> list[str]:
        if not files.views:
            raise InputError(files.label, f"no image for this label (expected {files.case_id}.view0.img.nii.gz)")
        ks = [int(_VIEW.match(p.name)["k"]) for p in files.views if _VIEW.match(p.name)]
        if ks and ks != list(range(len(ks))):
            expected = f"expected 0..{len(ks) - 1}"
            raise InputError(files.views[0].parent, f"case {files.case_id} has views {ks}, {expected}")
        views = [read_volume(p, dtype=np.float32) for p in files.views]
        label = read_volume(files.label, dtype=np.float32)
        case = preprocess_case(views, label, target_spacing, orientation)
        write_cached_case(output_dir, files.case_id, case)
        if case.properties["empty_label"]:
            return [f"{files.label}: empty coronary label; case kept as a negative example"]
        if case.properties["num_foreground_voxels"] == 0:
            return [f"{files.label}: coronary label vanished after resampling; case kept as a negative example"]
        return []

    return cache_case(files.case_id, work)


def preprocess_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    target_spacing: Sequence[float] = TARGET_SPACING,
    workers: int = 1,
    overwrite: bool = False,
    *,
    on_result: Callable[[CaseResult], None] | None = None,
    progress: Callable[[Iterable[Any], str, int], Iterable[Any]] | None = None,
    kind: str = "ncct",
    process: Callable[..., CaseResult] | None = None,
    write_info: Callable[[str | os.PathLike, Sequence[float]], dict[str, Any]] | None = None,
    cases: Sequence[CaseFiles] | None = None,
    orientation: str = "canonical",
) -> list[CaseResult]:
    """Preprocess every case of `input_dir` into the cache `output_dir`, in parallel over cases.

    Finished cases are skipped unless `overwrite`; a failing case is reported in its
    CaseResult and never stops the others. dataset.json is rewritten at the end.
    on_result: called with each CaseResult as it finishes; progress(items, name, total): wraps the case loop.
    kind, process(files, output_dir, spacing, overwrite), write_info(output_dir, spacing): the cache kind
    and how its cases and dataset.json are made (default: the NCCT cache; see `cta_cache`); cases: the input
    cases when found otherwise (default `find_cases(input_dir)`; `labelled`).
    Raises InputError when the folder has no cases or the cache was made with another spacing or kind.
    """
    process = process or process_case_files
    write_info = write_info or write_dataset_info
    cases = find_cases(input_dir) if cases is None else list(cases)
    if not cases:
        raise InputError(input_dir, "no cases found (expected {id}.label.nii.gz with {id}.view0.img.nii.gz)")
    output_dir = Path(output_dir)
    info_path = output_dir / "dataset.json"
    if info_path.exists() and not overwrite:
        old_info = read_dataset_info(output_dir)
        old = old_info.get("spacing")
        if old is not None and not np.allclose(old, target_spacing):
            raise InputError(info_path, f"cache made with spacing {old}; use --overwrite or another output folder")
        if old_info.get("kind", "ncct") != kind:
            raise InputError(info_path, f"holds a {old_info.get('kind', 'ncct')} cache, not {kind}; use another folder")
        if old_info.get("orientation", "canonical") != orientation:
            made = old_info.get("orientation", "canonical")
            raise InputError(info_path, f"cache made in '{made}' orientation, not '{orientation}'; use another folder")
    if orientation != "canonical":
        process = functools.partial(process, orientation=orientation)
        write_info = functools.partial(write_info, orientation=orientation)
    output_dir.mkdir(parents=True, exist_ok=True)
    wrap = progress or (lambda items, name, total: items)
    results: list[CaseResult] = []
    args = (output_dir, tuple(float(s) for s in target_spacing), overwrite)
    if workers <= 1:
        finished: Iterable[CaseResult] = (process(files, *args) for files in cases)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        futures = [pool.submit(process, files, *args) for files in cases]
        finished = (future.result() for future in as_completed(futures))
    try:
        for result in wrap(finished, "preprocess", len(cases)):
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if pool is not None:
            pool.shutdown()
    write_info(output_dir, target_spacing)
    return sorted(results, key=lambda r: r.case_id)
