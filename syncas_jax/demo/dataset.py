"""Phantom data sets for the demo and the study, built with the command-line tools a user would type.

    cta/          phantom CTA input of the training cases ({id}.img.nii.gz + full label map)
    test_cta/     held-out phantom CTA (anatomy never trained on)
    synth/        training views: two synthetic NCCT renderings per case, with the random HU offsets
    test_synth/   held-out scans rendered as a scanner shows them (`synth --realistic`)
    test_ncct/    the held-out scans as `{id}_NCCT.nii.gz`, test_labels/ their coronary masks
    cache/        the preprocessed training cache

Held-out scans under another scanner protocol (`build_held_out`, e.g. 3 mm slices at a quarter of
the dose) go to the same folders with the protocol's name appended (`test_cta_3mm_quarter_dose/`,
…): the same held-out patients (phantom ids), regenerated on the protocol's slice grid and
acquired at its dose.

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


@dataclass(frozen=True)
class Protocol:
    """How held-out scans are acquired. name: folder suffix ("" = the phantoms' own grid and dose);
    slice_mm: slice spacing (None: the phantoms'); dose: photon counts × dose (`synth --dose`)."""

    name: str = ""
    slice_mm: float | None = None
    dose: float = 1.0

    def folder(self, out: Path, stem: str) -> Path:
        """`out/stem` for the phantoms' own protocol, else `out/stem_<name>`."""
        return out / (f"{stem}_{self.name}" if self.name else stem)

    def grid(self, phantoms: PhantomSet) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """(shape, spacing) of a held-out phantom under this protocol: the same field of view in z."""
        if self.slice_mm is None:
            return phantoms.shape, phantoms.spacing
        z_mm = phantoms.shape[0] * phantoms.spacing[0]
        shape = (max(1, round(z_mm / self.slice_mm)), *phantoms.shape[1:])
        return shape, (float(self.slice_mm), *phantoms.spacing[1:])


PROTOCOLS = {
    "demo": Protocol(),  # the training phantoms' grid (2 mm slices in the demo), the reference dose
    "3mm_quarter_dose": Protocol("3mm_quarter_dose", 3.0, 0.25),  # a low-dose calcium-scoring protocol
}


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


def build_held_out(out: Path, phantoms: PhantomSet, protocol: Protocol, log: Path) -> Path:
    """The held-out scans of `phantoms` acquired under `protocol`; returns their `test_ncct*` folder.

    The held-out patients are the last `test_cases` phantom ids (as in `build`), regenerated on the
    protocol's grid, rendered as a scanner shows them at its dose, staged as `{id}_NCCT.nii.gz` with
    the labels beside (`test_labels*`). The phantoms' own protocol is `build`'s `test_ncct/`.
    """
    if not protocol.name:
        return out / "test_ncct"
    shape, spacing = protocol.grid(phantoms)
    test_cta, test_synth = protocol.folder(out, "test_cta"), protocol.folder(out, "test_synth")
    run_stage(
        python_m("syncas_jax.synth", "--phantom", phantoms.test_cases, "--phantom-start", phantoms.cases,
                 "-o", test_cta, "--seed", phantoms.seed, "--phantom-shape", *shape, "--phantom-spacing", *spacing),
        log,
    )  # fmt: skip
    run_stage(
        python_m("syncas_jax.synth", "-i", test_cta, "-o", test_synth, "--views", 1, "--realistic",
                 "--seed", phantoms.seed, "--dose", protocol.dose),
        log,
    )  # fmt: skip
    ncct = protocol.folder(out, "test_ncct")
    stage_test_scans(test_synth, ncct, protocol.folder(out, "test_labels"))
    return ncct
