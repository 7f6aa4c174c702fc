"""`python -m syncas_jax.synth`: render synthetic NCCT views of a folder of labelled CTA cases.

Input folder (ImageCAS layout plus organ labels): `{id}.img.nii.gz` (CTA, HU) and
`{id}.label.nii.gz` (label map, coronary arteries = 128; build it with
`python -m syncas_jax.synth.merge`). Output folder, per case with K views:
`{id}.view{k}.img.nii.gz` (int16 HU, the input's affine and header),
`{id}.view{k}.plaques.json` (inserted plaques), `{id}.view{k}.calcium.nii.gz` (uint8 calcium
lesion map: the voxels of each calcified plaque, valued with its artery, LM 1 LAD 2 LCX 3 RCA 4,
when the input has an `{id}.arteries.nii.gz` map (copied alongside), else 5) and
`{id}.label.nii.gz` (uint8 binary coronary mask), written last, so its presence marks the case done; reruns skip done
cases unless --overwrite. A failing case is logged with its reason (stderr and
`synth.log` in the output folder) and skipped; the exit status is 1 if any case failed.

Realistic renders (`--realistic`) insert the plaques into the HU volume before the simulated
acquisition, so its blur, noise and blooming act on the calcium; training views paint them onto the
acquired image (`--plaques` overrides either). `--calcium-load` sets how many plaques a view gets
(`cycle`: none, mild, moderate, severe in turn over the sorted cases, so a held-out set spans the
risk categories).

`--phantom N` instead writes N procedural phantom *CTA input* cases
(`phantom_{i:03d}.img.nii.gz` + `.arteries.nii.gz` + `.label.nii.gz`, full label map; i from
`--phantom-start`) into
-o, ready to be rendered by a second call with that folder as -i. A phantom's anatomy depends
only on its id and `--seed`, so the same ids at another `--phantom-spacing` are the same
patients scanned with another protocol.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from syncas_jax.common.arteries import ARTERIES_SUFFIX
from syncas_jax.common.console import guarded, note, progress
from syncas_jax.common.errors import InputError
from syncas_jax.common.files import write_json
from syncas_jax.common.nifti import Volume, check_same_grid, read_volume, write_volume
from syncas_jax.synth.hu_table import CORONARY_ID, TABLES
from syncas_jax.synth.plaques import CALCIUM_LOADS

LOAD_CYCLE = ("none", "mild", "moderate", "severe")  # --calcium-load cycle, by case index

IMAGE_SUFFIXES = (".img.nii.gz", ".img.nii")
LOG_NAME = "synth.log"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.synth",
        description="Render synthetic non-contrast CT views from labelled CTA cases (SynCAS data engine).",
    )
    parser.add_argument("-i", "--input", type=Path, help="folder of {id}.img.nii.gz + {id}.label.nii.gz CTA cases")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--views", type=int, default=2, help="renderings per case (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="global seed; each case's seed derives from it and its id")
    parser.add_argument("--overwrite", action="store_true", help="re-render cases that are already done")
    parser.add_argument("--hu-table", choices=sorted(TABLES), default="reference", help="label→HU table")
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="render as a scanner shows the anatomy: table HU without the random offsets of training views "
        "(held-out test scans); photon counts and plaques as always",
    )
    parser.add_argument(
        "--dose",
        type=float,
        default=1.0,
        help="photon counts x DOSE (default 1: the reference's 1e4-1e5 per slice; 0.25 = a quarter-dose scan, "
        "twice the noise std)",
    )
    parser.add_argument(
        "--plaques",
        choices=("before", "after"),
        help="insert plaques before the acquisition (default for --realistic) or paint them after it (default)",
    )
    parser.add_argument(
        "--calcium-load",
        choices=(*CALCIUM_LOADS, "cycle"),
        default="default",
        help="plaques per view: default 0-15 (65%% calcified, sized by the lumen); none; calcified plaques of "
        "clinical size: mild 1-2, moderate 3-4, severe 6-9; cycle: none, mild, moderate, severe in turn over the "
        "sorted cases",
    )
    parser.add_argument("--chunk", type=int, default=32, help="axial slices simulated at once (memory vs speed)")
    parser.add_argument("--phantom", type=int, metavar="N", help="write N phantom CTA input cases into -o instead")
    parser.add_argument(
        "--phantom-start", type=int, default=0, metavar="I", help="first phantom index (ids phantom_I ... ; default 0)"
    )
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=(128, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--phantom-spacing", type=float, nargs=3, default=(1.0, 0.8, 0.8), metavar=("SZ", "SY", "SX"))
    args = parser.parse_args(argv)
    if args.phantom is None and args.input is None:
        parser.error("give -i INPUT (or --phantom N)")
    for name in ("views", "chunk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.dose > 0:
        parser.error("--dose must be positive")
    if args.phantom is not None and (args.phantom < 0 or args.phantom_start < 0):
        parser.error("--phantom and --phantom-start must be at least 0")
    return args


def find_cases(folder: Path) -> list[tuple[str, Path]]:
    """(case id, image path) for every `{id}.img.nii[.gz]` in `folder`, sorted by id."""
    if not folder.is_dir():
        raise InputError(folder, "input folder not found")
    cases = {}
    for path in folder.iterdir():
        for suffix in IMAGE_SUFFIXES:
            if path.name.endswith(suffix) and not path.name.startswith("."):
                cases.setdefault(path.name[: -len(suffix)], path)
    if not cases:
        raise InputError(folder, "no {id}.img.nii.gz cases found")
    return sorted(cases.items())


def label_path_for(image_path: Path, case_id: str) -> Path:
    """The label file beside an image: same extension family, `.label` instead of `.img`."""
    for name in (f"{case_id}.label.nii.gz", f"{case_id}.label.nii"):
        if (image_path.parent / name).exists():
            return image_path.parent / name
    raise InputError(image_path.parent / f"{case_id}.label.nii.gz", "label file not found")


def read_case(image_path: Path, case_id: str) -> tuple[Volume, Volume, np.ndarray]:
    """Read and check one case: (image volume, label volume, int16 labels); InputError on any problem."""
    image = read_volume(image_path)
    label = read_volume(label_path_for(image_path, case_id))
    check_same_grid(image, label)
    values = label.array
    if not np.array_equal(values, np.rint(values)) or values.min() < 0 or values.max() > 32767:
        raise InputError(label.path, "label map must hold non-negative integer ids")
    labels = values.astype(np.int16)
    if not np.any(labels == CORONARY_ID):
        raise InputError(
            label.path,
            f"no coronary label (id {CORONARY_ID}); build the label map with python -m syncas_jax.synth.merge",
        )
    return image, label, labels


def output_paths(folder: Path, case_id: str, views: int) -> tuple[list[Path], list[Path], list[Path], Path]:
    """(view images, plaque sidecars, calcium lesion maps, coronary label) of a case in the output folder."""
    images = [folder / f"{case_id}.view{k}.img.nii.gz" for k in range(views)]
    sidecars = [folder / f"{case_id}.view{k}.plaques.json" for k in range(views)]
    calcium = [folder / f"{case_id}.view{k}.calcium.nii.gz" for k in range(views)]
    return images, sidecars, calcium, folder / f"{case_id}.label.nii.gz"


def is_done(folder: Path, case_id: str, views: int) -> bool:
    images, sidecars, calcium, label = output_paths(folder, case_id, views)
    return all(p.exists() for p in [*images, *sidecars, *calcium, label])


def read_arteries(image_path: Path, case_id: str, image: Volume) -> Volume | None:
    """The case's `{id}.arteries.nii.gz` beside its image (on the image's grid), or None."""
    path = image_path.parent / f"{case_id}{ARTERIES_SUFFIX}"
    if not path.exists():
        return None
    arteries = read_volume(path)
    check_same_grid(image, arteries)
    return arteries


def render_one(image_path: Path, case_id: str, out: Path, args: argparse.Namespace, load: str = "default") -> int:
    """Render and write one case; return the number of plaques inserted over its views.

    Input problems raise InputError before anything is touched; a failure while rendering
    or writing removes the case's outputs, so a failed case leaves nothing behind.
    """
    from syncas_jax.synth.engine import case_seed, render_case
    from syncas_jax.synth.plaques import calcium_lesion_map

    image, label, labels = read_case(image_path, case_id)
    arteries = read_arteries(image_path, case_id, image)
    images, sidecars, calcium, label_out = output_paths(out, case_id, args.views)
    arteries_out = out / f"{case_id}{ARTERIES_SUFFIX}"
    label_out.unlink(missing_ok=True)  # the case reads as not done until every file is rewritten
    try:
        views = render_case(
            image.array,
            labels,
            case_seed(args.seed, case_id),
            args.hu_table,
            views=args.views,
            spacing=image.spacing,
            chunk=args.chunk,
            realistic=args.realistic,
            dose=args.dose,
            plaques_first=None if args.plaques is None else args.plaques == "before",
            load=CALCIUM_LOADS[load],
        )
        artery_map = None if arteries is None else np.asarray(arteries.array)
        for view, image_file, sidecar, lesions in zip(views, images, sidecars, calcium):
            write_volume(view.image, image_file, image, dtype=np.int16)
            write_json(view.plaques, sidecar)
            lesion_map = calcium_lesion_map(view.plaques, labels.shape, image.spacing, artery_map)
            write_volume(lesion_map, lesions, image, dtype=np.uint8)
        if artery_map is not None:
            write_volume(artery_map, arteries_out, image, dtype=np.uint8)
        write_volume(labels == CORONARY_ID, label_out, label, dtype=np.uint8)
    except BaseException:
        for path in [label_out, *images, *sidecars, *calcium, arteries_out]:
            path.unlink(missing_ok=True)
        raise
    return sum(len(v.plaques) for v in views)


class RunLog:
    """One line per case event, to stderr (failures) and appended to `synth.log` in the output folder."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOG_NAME

    def write(self, line: str, *, echo: bool = False) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if echo:
            note(line)


def run_phantoms(args: argparse.Namespace) -> int:
    from syncas_jax.synth.engine import case_seed
    from syncas_jax.synth.phantom import write_phantom_case

    written = skipped = 0
    indices = range(args.phantom_start, args.phantom_start + args.phantom)
    for i in progress(indices, "phantom", total=args.phantom):
        case_id = f"phantom_{i:03d}"
        if (args.output / f"{case_id}.label.nii.gz").exists() and not args.overwrite:
            skipped += 1
            continue
        seed = case_seed(args.seed, case_id)
        write_phantom_case(args.output, case_id, tuple(args.phantom_shape), tuple(args.phantom_spacing), seed)
        written += 1
    print(f"phantom: {written} written, {skipped} skipped (already present) in {args.output}")
    return 0


def run_cases(args: argparse.Namespace) -> int:
    if args.output.resolve() == args.input.resolve():
        raise InputError(args.output, "output folder must differ from the input folder")
    cases = find_cases(args.input)
    log = RunLog(args.output)
    style = "realistic" if args.realistic else "training"
    log.write(
        f"run: {len(cases)} cases from {args.input}, views {args.views}, seed {args.seed}, table {args.hu_table}, "
        f"{style} renders, dose {args.dose:g}"
    )
    rendered = skipped = 0
    failed: list[str] = []
    for index, (case_id, image_path) in enumerate(progress(cases, "synth", total=len(cases))):
        load = LOAD_CYCLE[index % len(LOAD_CYCLE)] if args.calcium_load == "cycle" else args.calcium_load
        if not args.overwrite and is_done(args.output, case_id, args.views):
            skipped += 1
            log.write(f"skipped {case_id}: already done")
            continue
        try:
            plaques = render_one(image_path, case_id, args.output, args, load)
        except InputError as error:
            failed.append(case_id)
            log.write(f"failed {case_id}: {error}", echo=True)
            continue
        except Exception as error:  # one bad case must not stop the run
            failed.append(case_id)
            log.write(f"failed {case_id}: {type(error).__name__}: {error}", echo=True)
            continue
        rendered += 1
        log.write(f"rendered {case_id}: {args.views} views, {plaques} plaques (calcium load {load})")
    summary = f"synth: {rendered} rendered, {skipped} skipped (done), {len(failed)} failed"
    if failed:
        summary += f" ({', '.join(failed)}; see {log.path})"
    log.write(summary)
    print(summary)
    return 1 if failed else 0


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phantom is not None:
        return run_phantoms(args)
    return run_cases(args)


if __name__ == "__main__":
    sys.exit(main())
