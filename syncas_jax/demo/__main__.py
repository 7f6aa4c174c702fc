"""`python -m syncas_jax.demo [--out runs/demo]`: the whole pipeline on the built-in phantom.

phantom CTA cases → synth (2 synthetic NCCT views each) → preprocess → train
(the shipped config `demo`, syncas_jax/configs/demo.json) → infer on held-out cases → evaluate. Each stage is run
as the command a user would type (printed as it runs), so the demo doubles as a tour of
the command-line tools. Everything lands in one folder:

  cta/        phantom CTA input (training cases)        test_cta/  held-out CTA
  synth/      synthetic NCCT views of the training cases
  cache/      preprocessed training cache
  train/      checkpoints, metrics.jsonl, progress.png
  test_ncct/  held-out synthetic NCCT scans (the "real" scans here), `{id}_NCCT.nii.gz`
  test_labels/ their coronary labels
  pred/       predictions `CA_{id}_NCCT.nii.gz`
  report/     metrics.csv, metrics.json, overlays/*.png
  figure.png  CTA slice → synthetic NCCT → prediction overlay
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from syncas_jax.common.console import guarded
from syncas_jax.common.errors import InputError
from syncas_jax.train.config import read_config_file, shipped_config_path

# Sizes: (phantom shape z y x, phantom spacing mm, config overrides)
PRESETS = {
    "default": ((64, 256, 256), (1.5, 0.625, 0.625), {}),
    "tiny": (
        (24, 64, 64),
        (2.0, 1.5, 1.5),
        {
            "ngf": 4,
            "depth": 3,
            "patch_size": [16, 32, 32],
            "spacing": [2.0, 1.5, 1.5],
            "num_epochs": 1,
            "num_iterations_per_epoch": 2,
            "num_val_iterations_per_epoch": 1,
            "num_anchor": 32,
            "test_every": 1,
        },
    ),
}


def run(command: list[str], log: Path) -> None:
    """Run one stage, echoing the command; stop the demo with its output if it fails."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ {shlex.join(command)}\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise InputError(log, "stage failed:\n" + "\n".join(tail))


def python_m(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def split_held_out(cta: Path, test_cta: Path, test_cases: int) -> list[str]:
    """Move the last `test_cases` phantom cases into the held-out folder; return their ids."""
    ids = sorted(p.name[: -len(".label.nii.gz")] for p in cta.glob("*.label.nii.gz"))
    held = ids[-test_cases:]
    test_cta.mkdir(parents=True, exist_ok=True)
    for case_id in held:
        for path in cta.glob(f"{case_id}.*"):
            shutil.move(str(path), test_cta / path.name)
    return held


def stage_test_scans(test_synth: Path, ncct: Path, labels: Path) -> None:
    """View 0 of each held-out case becomes `{id}_NCCT.nii.gz`; its label goes alongside."""
    ncct.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for label in sorted(test_synth.glob("*.label.nii.gz")):
        case_id = label.name[: -len(".label.nii.gz")]
        shutil.copy(test_synth / f"{case_id}.view0.img.nii.gz", ncct / f"{case_id}_NCCT.nii.gz")
        shutil.copy(label, labels / f"{case_id}_NCCT.nii.gz")


def make_figure(out: Path, case_id: str) -> Path:
    """CTA slice → synthetic NCCT → prediction (red) and reference (green) overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from syncas_jax.common.files import atomic_path
    from syncas_jax.common.nifti import read_volume

    cta = read_volume(out / "test_cta" / f"{case_id}.img.nii.gz").array
    ncct = read_volume(out / "test_ncct" / f"{case_id}_NCCT.nii.gz").array
    ref = read_volume(out / "test_labels" / f"{case_id}_NCCT.nii.gz").array > 0
    pred = read_volume(out / "pred" / f"CA_{case_id}_NCCT.nii.gz").array > 0
    z = int(np.argmax(ref.sum(axis=(1, 2))))
    window = dict(cmap="gray", vmin=-150, vmax=250)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    axes[0].imshow(cta[z], **window)
    axes[0].set_title("contrast CT (phantom)")
    axes[1].imshow(ncct[z], **window)
    axes[1].set_title("synthetic non-contrast CT")
    axes[2].imshow(ncct[z], **window)
    overlay = np.zeros((*ref[z].shape, 4))
    overlay[ref[z] & ~pred[z]] = (0, 1, 0, 0.8)
    overlay[pred[z] & ~ref[z]] = (1, 0, 0, 0.8)
    overlay[pred[z] & ref[z]] = (1, 1, 0, 0.9)
    axes[2].imshow(overlay)
    axes[2].set_title("prediction: yellow hit, red false +, green missed")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = out / "figure.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m syncas_jax.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases for training+validation (default 6)")
    parser.add_argument("--test-cases", type=int, default=2, help="held-out phantom cases (default 2)")
    parser.add_argument("--size", choices=sorted(PRESETS), default="default", help="'tiny' is for CI smoke tests")
    parser.add_argument("--epochs", type=int, help="override num_epochs of the demo config")
    parser.add_argument("--tta", action="store_true", help="8-way mirror test-time augmentation (8x slower inference)")
    args = parser.parse_args(argv)
    if args.cases < 2 or args.test_cases < 1:
        parser.error("need --cases >= 2 (training + validation) and --test-cases >= 1")
    return args


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    shape, spacing, overrides = PRESETS[args.size]
    if args.epochs:
        overrides = {**overrides, "num_epochs": args.epochs}
    started = time.perf_counter()

    cta, test_cta = out / "cta", out / "test_cta"
    if not test_cta.exists():
        run(
            python_m(
                "syncas_jax.synth",
                "--phantom", str(args.cases + args.test_cases), "-o", str(cta),
                "--phantom-shape", *map(str, shape), "--phantom-spacing", *map(str, spacing),
            ),
            log,
        )  # fmt: skip
        split_held_out(cta, test_cta, args.test_cases)
    run(python_m("syncas_jax.synth", "-i", str(cta), "-o", str(out / "synth"), "--views", "2"), log)
    run(python_m("syncas_jax.synth", "-i", str(test_cta), "-o", str(out / "test_synth"), "--views", "1"), log)
    stage_test_scans(out / "test_synth", out / "test_ncct", out / "test_labels")

    config = {**read_config_file(shipped_config_path("demo")), **overrides}
    config.update(data_dir=str(out / "cache"), output_dir=str(out / "train"))
    config_path = out / "demo_config.json"
    config_path.write_text(json.dumps(config, indent=2))
    run(
        python_m(
            "syncas_jax.preprocess", "-i", str(out / "synth"), "-o", str(out / "cache"),
            "--spacing", *map(str, config["spacing"]),
        ),
        log,
    )  # fmt: skip
    run(python_m("syncas_jax.train", "--config", str(config_path), "--resume", "--no-progress"), log)
    infer = python_m(
        "syncas_jax.infer", "-i", str(out / "test_ncct"), "-o", str(out / "pred"),
        "-m", str(out / "train" / "checkpoints" / "best"), "--overwrite",
    )  # fmt: skip
    run(infer if args.tta else [*infer, "--no-tta"], log)
    run(
        python_m(
            "syncas_jax.evaluate", "--pred", str(out / "pred"), "--ref", str(out / "test_labels"),
            "--image", str(out / "test_ncct"), "-o", str(out / "report"),
        ),
        log,
    )  # fmt: skip
    held = sorted(p.name[: -len("_NCCT.nii.gz")] for p in (out / "test_ncct").glob("*_NCCT.nii.gz"))
    figure = make_figure(out, held[0])
    summary = json.loads((out / "report" / "metrics.json").read_text())
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; everything is in {out}/")
    print(f"  metric table: {out / 'report' / 'metrics.csv'} (mean Dice {_mean(summary, 'dice')})")
    print(f"  training curves: {out / 'train' / 'progress.png'}")
    print(f"  predictions: {out / 'pred'}  overlays: {out / 'report' / 'overlays'}  figure: {figure}")
    return 0


def _mean(summary: dict, key: str) -> str:
    try:
        return f"{summary['summary'][key]['mean']:.3f}"
    except (KeyError, TypeError):
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
