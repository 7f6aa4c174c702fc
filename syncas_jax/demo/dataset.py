"""Phantom data sets for the demo and the study, built with the command-line tools a user would type.

    cta/          phantom CTA input of the training cases ({id}.img.nii.gz + full label map)
    test_cta/     held-out phantom CTA (anatomy never trained on)
    synth/        training views: two synthetic NCCT renderings per case, with the random HU offsets
    test_synth/   held-out scans rendered as a scanner shows them (`synth --realistic`)
    test_ncct/    the held-out scans as `{id}_NCCT.nii.gz`, test_labels/ their coronary masks
    cache/        the preprocessed training cache

Each stage is echoed and logged as the command it runs; a stage whose outputs exist is skipped
by the tool itself, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from syncas_jax.common.errors import InputError


@dataclass(frozen=True)
class PhantomSet:
    """cases: training + validation phantoms; test_cases: held-out ones; shape (z, y, x) voxels and
    spacing (z, y, x) mm of every phantom; seed: phantom anatomy and rendering draws."""

    cases: int
    test_cases: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    seed: int = 0
    views: int = 2


def python_m(module: str, *args: object) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def run_stage(command: list[str], log: Path, echo: bool = True) -> str:
    """Run one command, appending its output to `log`; InputError with the log's tail if it fails.

    Returns the command's stdout. With `echo`, the command and its duration are printed.
    """
    if echo:
        print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True)
    with log.open("a") as handle:
        handle.write(f"\n$ {shlex.join(command)}\n{result.stdout}{result.stderr}")
    if echo:
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).splitlines()[-15:]
        raise InputError(log, "stage failed:\n" + "\n".join(tail))
    return result.stdout


def case_ids(folder: Path, suffix: str = ".label.nii.gz") -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))


def split_held_out(cta: Path, test_cta: Path, test_cases: int) -> list[str]:
    """Move the last `test_cases` phantom cases into the held-out folder; return their ids."""
    held = case_ids(cta)[-test_cases:]
    test_cta.mkdir(parents=True, exist_ok=True)
    for case_id in held:
        for path in cta.glob(f"{case_id}.*"):
            shutil.move(str(path), test_cta / path.name)
    return held


def stage_test_scans(test_synth: Path, ncct: Path, labels: Path) -> None:
    """View 0 of each held-out case becomes `{id}_NCCT.nii.gz`; its label goes alongside."""
    ncct.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids(test_synth):
        shutil.copy(test_synth / f"{case_id}.view0.img.nii.gz", ncct / f"{case_id}_NCCT.nii.gz")
        shutil.copy(test_synth / f"{case_id}.label.nii.gz", labels / f"{case_id}_NCCT.nii.gz")


def build(out: Path, phantoms: PhantomSet, log: Path, cache_spacing: tuple[float, float, float]) -> None:
    """Every folder of the module docstring under `out`."""
    cta, test_cta = out / "cta", out / "test_cta"
    if not test_cta.exists():
        run_stage(
            python_m("syncas_jax.synth", "--phantom", phantoms.cases + phantoms.test_cases, "-o", cta,
                     "--seed", phantoms.seed, "--phantom-shape", *phantoms.shape,
                     "--phantom-spacing", *phantoms.spacing),
            log,
        )  # fmt: skip
        split_held_out(cta, test_cta, phantoms.test_cases)
    run_stage(
        python_m(
            "syncas_jax.synth", "-i", cta, "-o", out / "synth", "--views", phantoms.views, "--seed", phantoms.seed
        ),
        log,
    )
    run_stage(
        python_m("syncas_jax.synth", "-i", test_cta, "-o", out / "test_synth", "--views", 1, "--realistic",
                 "--seed", phantoms.seed),
        log,
    )  # fmt: skip
    stage_test_scans(out / "test_synth", out / "test_ncct", out / "test_labels")
    run_stage(
        python_m("syncas_jax.preprocess", "-i", out / "synth", "-o", out / "cache", "--spacing", *cache_spacing), log
    )
