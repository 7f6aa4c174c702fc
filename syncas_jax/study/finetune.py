"""The fine-tuning study (`python -m syncas_jax.study --finetune -o DIR [--pretrained DEMO_DIR]`).

What fine-tuning on a few labelled "real" scans buys, on phantoms. Pretrained: the demo's model
(`python -m syncas_jax.demo`; trained on synthetic NCCT of 8 phantoms at 2 mm slices and the
reference dose). "Real": realistic renders (`synth --realistic`, no HU offsets) of phantoms the
pretraining never saw, under a protocol it never saw either (3 mm slices, a quarter of the dose:
`demo.dataset.PROTOCOLS["3mm_quarter_dose"]`). K of them are labelled for fine-tuning, staged in
nnU-Net's raw layout and cached with `preprocess --labelled` as a user would; the demo's held-out
patients under the same protocol are the test scans. Arms:

  pretrained       the demo's `best` checkpoint as it is
  finetuned        + fine-tuned on the K scans (`init_checkpoint`, a tenth of the demo's learning rate)
  scratch          the same K scans and steps from scratch (the demo's own learning rate)
  finetuned_mixed  fine-tuned with every patch's cache drawn 50/50 from the K scans and the demo's
                   synthetic cache (`data_dir` [labelled, synthetic], `data_weights` [1, 1])

Every training arm: the demo recipe (network, patch, batch, loss) with augmentation on (the contrastive
pair of a one-view scan, design §12), `FINETUNE_EPOCHS` × the demo's iterations per epoch, the
`latest` checkpoint scored without TTA.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from syncas_jax.common.errors import InputError
from syncas_jax.common.files import write_json
from syncas_jax.common.nifti import read_volume
from syncas_jax.demo.dataset import PROTOCOLS, PhantomSet, Protocol, build_held_out, case_ids, python_m, run_stage
from syncas_jax.study.arms import METRICS, run_mean

PROTOCOL: Protocol = PROTOCOLS["3mm_quarter_dose"]
LABELLED_SCANS = 2  # K
FINETUNE_EPOCHS = 10  # × the demo's 16 iterations = 160 steps
LR_FACTOR = 0.1  # fine-tuning learning rate / pretraining learning rate (as the shipped `finetune` config)
#: the study's metrics, plus |Agatston(prediction) − Agatston(reference)| on the scan (calcium agreement)
FINETUNE_METRICS = (*METRICS, "agatston_abs_diff")
FINETUNE_ARMS: dict[str, dict[str, Any]] = {
    "pretrained": {},
    "finetuned": {"init": True},
    "scratch": {},
    "finetuned_mixed": {"init": True, "mix": True},
}


def demo_phantoms(demo: Path) -> PhantomSet:
    """The demo's phantom set, read back from its folders (training + held-out CTA, grid, seed)."""
    for needed in ("cta", "test_cta", "demo_config.json", "train/checkpoints/best"):
        if not (demo / needed).exists():
            raise InputError(demo / needed, "not found: run `python -m syncas_jax.demo --out DIR` first")
    test = case_ids(demo / "test_cta")
    volume = read_volume(demo / "test_cta" / f"{test[0]}.img.nii.gz")
    seed = int(json.loads((demo / "demo_config.json").read_text())["seed"])
    return PhantomSet(len(case_ids(demo / "cta")), len(test), volume.array.shape, volume.spacing, seed)


def stage_nnunet_raw(synth: Path, raw: Path) -> None:
    """Realistic renders `{id}.view0.img.nii.gz` + `{id}.label.nii.gz` → nnU-Net raw (imagesTr/, labelsTr/, json)."""
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    ids = case_ids(synth)
    for case_id in ids:
        shutil.copy(synth / f"{case_id}.view0.img.nii.gz", raw / "imagesTr" / f"{case_id}_0000.nii.gz")
        shutil.copy(synth / f"{case_id}.label.nii.gz", raw / "labelsTr" / f"{case_id}.nii.gz")
    info = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "coronary_arteries": 1},
            "numTraining": len(ids), "file_ending": ".nii.gz"}  # fmt: skip
    write_json(info, raw / "dataset.json")


def build_labelled(out: Path, phantoms: PhantomSet, spacing: tuple[float, ...], log: Path, k: int) -> Path:
    """K new phantoms under the protocol, labelled, in nnU-Net raw layout, cached; returns the cache."""
    shape, grid = PROTOCOL.grid(phantoms)
    cta, synth, raw, cache = (out / name for name in ("ft_cta", "ft_synth", "ft_raw", "ft_cache"))
    start = phantoms.cases + phantoms.test_cases  # ids after the demo's training and held-out phantoms
    run_stage(python_m("syncas_jax.synth", "--phantom", k, "--phantom-start", start, "-o", cta, "--seed",
                       phantoms.seed, "--phantom-shape", *shape, "--phantom-spacing", *grid), log)  # fmt: skip
    run_stage(python_m("syncas_jax.synth", "-i", cta, "-o", synth, "--views", 1, "--realistic",
                       "--seed", phantoms.seed, "--dose", PROTOCOL.dose), log)  # fmt: skip
    stage_nnunet_raw(synth, raw)
    run_stage(python_m("syncas_jax.preprocess", "--labelled", "-i", raw, "-o", cache, "--spacing", *spacing), log)
    return cache


def arm_config(out: Path, demo: Path, arm: str, seed: int) -> dict[str, Any]:
    """The flat config of one training arm: the demo recipe, augmentation on, the study's budget, the arm's change."""
    raw = json.loads((demo / "demo_config.json").read_text())
    change = FINETUNE_ARMS[arm]
    raw.update(
        augmentated=True, num_epochs=FINETUNE_EPOCHS, val_fraction=0.0, num_val_iterations_per_epoch=1,
        test_every=1000, evaluation_folder=None, seed=seed, output_dir=str(out / "runs" / f"{arm}_seed{seed}"),
        data_dir=str(out / "data" / "ft_cache"),
    )  # fmt: skip
    if change.get("init"):
        raw.update(
            init_checkpoint=str(demo / "train" / "checkpoints" / "best"), initial_lr=raw["initial_lr"] * LR_FACTOR
        )
    if change.get("mix"):
        raw.update(data_dir=[raw["data_dir"], str(demo / "cache")], data_weights=[1.0, 1.0])
    return raw


def score_folder(ncct: Path, labels: Path, checkpoint: Path) -> dict[str, dict[str, float]]:
    """Per scan `{id}_NCCT.nii.gz` of `ncct`: the study's metrics of `checkpoint` (no TTA) against `labels`."""
    from syncas_jax.data.orientation import checkpoint_orientation
    from syncas_jax.infer.cases import WindowSettings, predict_case
    from syncas_jax.infer.predict import inference_settings, load_model_for_inference
    from syncas_jax.metrics import case_metrics

    predict_fn, meta = load_model_for_inference(checkpoint)
    spacing, patch_size = inference_settings(meta)
    settings = WindowSettings(spacing, patch_size, tta=False, orientation=checkpoint_orientation(meta))
    cases = {}
    for path in sorted(ncct.glob("*_NCCT.nii.gz")):
        volume = read_volume(path)
        reference = read_volume(labels / path.name).array > 0
        prediction = predict_case(volume, predict_fn, settings)
        metrics = case_metrics(prediction.segmentation, reference, volume.spacing, volume.array)
        metrics["agatston_abs_diff"] = abs(metrics["agatston_pred"] - metrics["agatston_ref"])
        cases[path.name[: -len("_NCCT.nii.gz")]] = {key: float(metrics[key]) for key in FINETUNE_METRICS}
    return cases


def run_arm(out: Path, demo: Path, test: tuple[Path, Path], arm: str, seed: int) -> dict[str, Any]:
    """Train (unless `pretrained`) and score one arm; the result is kept in its run folder and reused."""
    from syncas_jax.train.config import config_from_dict
    from syncas_jax.train.loop import train_and_evaluate

    folder = out / "runs" / f"{arm}_seed{seed}"
    result_path = folder / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    started, steps = time.perf_counter(), 0
    if arm == "pretrained":
        checkpoint = demo / "train" / "checkpoints" / "best"
    else:
        config, _ = config_from_dict(arm_config(out, demo, arm, seed))
        train_and_evaluate(config, resume=True, log=lambda line: print(f"  {arm} seed {seed}: {line}", flush=True))
        checkpoint, steps = folder / "checkpoints" / "latest", config.train.total_steps
    seconds = time.perf_counter() - started
    cases = score_folder(*test, checkpoint)
    result = {"arm": arm, "seed": seed, "cases": cases, "mean": run_mean(cases, FINETUNE_METRICS), "steps": steps,
              "train_seconds": seconds}  # fmt: skip
    write_json(result, result_path)
    return result


def prepare(out: Path, demo: Path, log: Path) -> tuple[Path, Path]:
    """The labelled cache and the held-out test scans under the protocol; returns (test ncct, test labels)."""
    phantoms = demo_phantoms(demo)
    spacing = tuple(json.loads((demo / "demo_config.json").read_text())["spacing"])
    build_labelled(out / "data", phantoms, spacing, log, LABELLED_SCANS)
    ncct = build_held_out(out / "data", phantoms, PROTOCOL, log)
    return ncct, PROTOCOL.folder(out / "data", "test_labels")
