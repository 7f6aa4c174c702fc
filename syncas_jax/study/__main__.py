"""`python -m syncas_jax.study --size cpu|demo|gpu -o DIR`: the method's claim on phantoms, at a fixed budget.

`python -m syncas_jax.study --calcium -m CHECKPOINT -o DIR`: instead, the calcium agreement study of
a trained model (`syncas_jax.study.calcium`): DIR/calcium.md, calcium.json, calcium.png.

N training phantoms → two synthetic views each → the same training budget for every arm (Dice + CE
only; + plain contrastive; + branch-aware contrastive; see `syncas_jax.study.arms`), each with
several seeds → the last checkpoint of each run segments held-out phantoms rendered as a scanner
shows them, under each of the size's protocols (`demo.dataset.PROTOCOLS`) → per-case Dice, clDice,
HD95 (mm), recall and false-positive voxels → mean ± std over seeds per arm, and each arm's paired
difference against Dice + CE with 95 % intervals (`syncas_jax.study.paired`). Writes DIR/study.md
(the tables), study.json, study.csv, study.png; every run keeps
its folder under DIR/runs/, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from syncas_jax.common.console import guarded
from syncas_jax.common.files import write_json, write_text
from syncas_jax.demo.dataset import (
    PROTOCOLS,
    build,
    build_held_out,
    case_ids,
    python_m,
    run_stage,
    stage_test_scans,
)
from syncas_jax.study.arms import (
    ARMS,
    DEFAULT_ARMS,
    METRICS,
    SIZES,
    StudySize,
    format_paired,
    format_table,
    plot,
    protocol_runs,
    run_mean,
    summarize_runs,
    write_csv,
)
from syncas_jax.study.paired import case_key, paired_summary
from syncas_jax.train.config import config_from_dict, read_config_file, shipped_config_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m syncas_jax.study", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="cpu",
        help="cpu: 192 steps, 2-core CPU in about 1 hour; demo: the demo's 480 steps, two held-out protocols, "
        "paired differences (2-core CPU, about 80 min); gpu: one accelerator",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="study folder")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; with --finetune 0)")
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="the fine-tuning study instead (syncas_jax.study.finetune): the demo's model fine-tuned on 2 labelled "
        "scans of an unseen protocol, against no fine-tuning, training from scratch and synthetic mixing",
    )
    parser.add_argument(
        "--pretrained",
        type=Path,
        help="with --finetune: a finished demo run folder (default: run `python -m syncas_jax.demo` into OUT/demo)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=sorted(ARMS),
        default=list(DEFAULT_ARMS),
        help=f"arms to run (default {' '.join(DEFAULT_ARMS)}; 'online' renders the views in the train step)",
    )
    calcium = parser.add_argument_group("calcium agreement study (--calcium)")
    calcium.add_argument("--calcium", action="store_true", help="run the calcium agreement study of --model instead")
    calcium.add_argument("-m", "--model", type=Path, help="checkpoint to study (the demo's train/checkpoints/best)")
    calcium.add_argument("--cases", type=int, default=12, help="held-out phantoms (default 12: 3 per calcium load)")
    calcium.add_argument("--first-case", type=int, default=8,
                         help="first phantom id (default 8: the demo trains on 0-7)")  # fmt: skip
    calcium.add_argument("--phantom-seed", type=int, default=0, help="phantom seed (default 0, the demo's)")
    args = parser.parse_args(argv)
    if args.calcium and args.model is None:
        parser.error("--calcium needs -m/--model")
    if args.calcium and args.finetune:
        parser.error("--calcium and --finetune are two studies; run one at a time")
    if args.pretrained is not None and not args.finetune:
        parser.error("--pretrained applies to --finetune")
    if args.seeds is None:
        args.seeds = [0] if args.finetune else [0, 1, 2]
    return args


def run_calcium_study(args: argparse.Namespace) -> int:
    """Render the held-out calcium phantoms, segment them with the model, read each scan three ways, report."""
    from syncas_jax.common.nifti import read_volume
    from syncas_jax.demo.__main__ import PRESETS
    from syncas_jax.study import calcium

    shape, spacing, _ = PRESETS["default"]
    data, log, started = args.out / "calcium", args.out / "calcium.log", time.perf_counter()
    run_stage(python_m("syncas_jax.synth", "--phantom", args.cases, "--phantom-start", args.first_case,
                       "-o", data / "cta", "--seed", args.phantom_seed, "--phantom-shape", *shape,
                       "--phantom-spacing", *spacing), log)  # fmt: skip
    run_stage(python_m("syncas_jax.synth", "-i", data / "cta", "-o", data / "synth", "--views", 1, "--realistic",
                       "--calcium-load", "cycle", "--seed", args.phantom_seed), log)  # fmt: skip
    stage_test_scans(data / "synth", data / "ncct", data / "labels")
    run_stage(python_m("syncas_jax.infer", "-i", data / "ncct", "-o", data / "pred", "-m", args.model, "--no-tta",
                       "--report", "--arteries"), log)  # fmt: skip
    cases = []
    for case_id in case_ids(data / "synth"):
        scan = read_volume(data / "ncct" / f"{case_id}_NCCT.nii.gz")
        cases.append(calcium.case_calcium(
            case_id, scan, read_volume(data / "pred" / f"CA_{case_id}_NCCT.nii.gz"),
            read_volume(data / "pred" / f"CA_{case_id}_NCCT_arteries.nii.gz"),
            read_volume(data / "synth" / f"{case_id}.view0.calcium.nii.gz"),
            read_volume(data / "labels" / f"{case_id}_NCCT.nii.gz"),
            read_volume(data / "synth" / f"{case_id}.arteries.nii.gz"),
        ))  # fmt: skip
    summary = {"model": str(args.model), "seed": args.phantom_seed, "first_case": args.first_case,
               **calcium.summarize(cases)}  # fmt: skip
    write_json(summary, args.out / "calcium.json")
    report = calcium.format_report(summary)
    write_text(report + "\n", args.out / "calcium.md")
    calcium.plot(summary, args.out / "calcium.png")
    print(f"\n{report}\n\ncalcium study finished in {time.perf_counter() - started:.0f} s; results in {args.out}/")
    return 0


BASELINE_ARM = "dice_ce"  # every other arm's paired difference is taken against it


def run_config(out: Path, size: StudySize, arm: str, seed: int) -> dict[str, Any]:
    """The flat config of one run: the demo recipe, the size's budget, the arm's change, the seed."""
    raw = {**read_config_file(shipped_config_path("demo")), **size.config, **ARMS[arm], "seed": seed}
    cache = "cta_cache" if raw.get("synthesis") == "online" else "cache"
    raw.update(data_dir=str(out / "data" / cache), output_dir=str(out / "runs" / f"{arm}_seed{seed}"))
    return raw


def build_cta_cache(data: Path, spacing: tuple[float, ...], log: Path) -> None:
    """The CTA cache of the study's training phantoms, for the online arm (skips finished cases)."""
    run_stage(python_m("syncas_jax.preprocess", "--cta", "-i", data / "cta", "-o", data / "cta_cache",
                       "--spacing", *spacing), log)  # fmt: skip


def score_held_out(data: Path, checkpoint: Path, protocols: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per held-out scan of each protocol: Dice, clDice, HD95 (mm), recall, false-positive voxels (no TTA).

    Keys: the patient id for the first protocol, `id@protocol` for the others (`paired.case_key`).
    """
    from syncas_jax.common.nifti import read_volume
    from syncas_jax.infer.cases import WindowSettings, predict_case
    from syncas_jax.infer.predict import inference_settings, load_model_for_inference
    from syncas_jax.metrics import case_metrics

    predict_fn, meta = load_model_for_inference(checkpoint)
    spacing, patch_size = inference_settings(meta)
    cases = {}
    for name in protocols:
        ncct, labels = (PROTOCOLS[name].folder(data, stem) for stem in ("test_ncct", "test_labels"))
        for case_id in case_ids(ncct, "_NCCT.nii.gz"):
            volume = read_volume(ncct / f"{case_id}_NCCT.nii.gz")
            reference = read_volume(labels / f"{case_id}_NCCT.nii.gz").array > 0
            prediction = predict_case(volume, predict_fn, WindowSettings(spacing, patch_size, tta=False))
            metrics = case_metrics(prediction.segmentation, reference, volume.spacing)
            cases[case_key(case_id, name, protocols)] = {key: float(metrics[key]) for key in METRICS}
    return cases


def run_one(out: Path, size: StudySize, arm: str, seed: int) -> dict[str, Any]:
    """Train one (arm, seed) and score it; the result is kept in its run folder and reused."""
    from syncas_jax.train.loop import train_and_evaluate

    raw = run_config(out, size, arm, seed)
    result_path = Path(raw["output_dir"]) / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    config, _ = config_from_dict(raw)
    started = time.perf_counter()
    train_and_evaluate(config, resume=True, log=lambda line: print(f"  {arm} seed {seed}: {line}", flush=True))
    seconds = time.perf_counter() - started
    cases = score_held_out(out / "data", Path(raw["output_dir"]) / "checkpoints" / "latest", size.protocols)
    result = {"arm": arm, "seed": seed, "cases": cases, "mean": run_mean(cases), "train_seconds": seconds,
              "score_seconds": time.perf_counter() - started - seconds}  # fmt: skip
    write_json(result, result_path)
    return result


def finetune_study(args: argparse.Namespace) -> int:
    """`--finetune`: every arm of `study.finetune` per seed, then the table, JSON, CSV and plot in OUT/finetune.*."""
    from syncas_jax.study.finetune import FINETUNE_ARMS, FINETUNE_METRICS, prepare, run_arm

    started = time.perf_counter()
    log = args.out / "study.log"
    demo = args.pretrained or args.out / "demo"
    if args.pretrained is None:
        run_stage(python_m("syncas_jax.demo", "--out", demo, "--seed", args.seeds[0]), log)
    test = prepare(args.out, demo, log)
    results = []
    for arm in FINETUNE_ARMS:
        for seed in args.seeds:
            print(f"\n[{arm}, seed {seed}]", flush=True)
            result = run_arm(args.out, demo, test, arm, seed)
            print(f"  held-out Dice {result['mean']['dice']:.3f}, clDice {result['mean']['cldice']:.3f}", flush=True)
            results.append(result)
    table = summarize_runs(results, FINETUNE_METRICS)
    write_json({"study": "finetune", "seeds": args.seeds, "arms": table, "runs": results}, args.out / "finetune.json")
    write_csv(results, args.out / "finetune.csv", FINETUNE_METRICS)
    markdown = format_table(table, FINETUNE_METRICS)
    write_text(markdown + "\n", args.out / "finetune.md")
    plot(results, args.out / "finetune.png")
    print(
        f"\n{markdown}\n\nfine-tuning study finished in {time.perf_counter() - started:.0f} s; results in {args.out}/"
    )
    return 0


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    args.out.mkdir(parents=True, exist_ok=True)
    if args.calcium:
        return run_calcium_study(args)
    jax.config.update("jax_compilation_cache_dir", str(args.out / ".jax_cache"))  # every run of an arm compiles once
    if args.finetune:
        return finetune_study(args)
    return arm_study(args)


def arm_study(args: argparse.Namespace) -> int:
    """The arms × seeds of `--size`: data once, every run in this process, then tables and paired differences."""
    size = SIZES[args.size]
    started, log = time.perf_counter(), args.out / "study.log"
    spacing = tuple(run_config(args.out, size, args.arms[0], 0)["spacing"])
    build(args.out / "data", size.phantoms, log, spacing)
    for name in size.protocols:
        build_held_out(args.out / "data", size.phantoms, PROTOCOLS[name], log)
    if any(ARMS[arm].get("synthesis") == "online" for arm in args.arms):
        build_cta_cache(args.out / "data", spacing, log)
    results = []
    for arm in args.arms:
        for seed in args.seeds:
            print(f"\n[{arm}, seed {seed}]", flush=True)
            result = run_one(args.out, size, arm, seed)
            print(f"  held-out Dice {result['mean']['dice']:.3f}, clDice {result['mean']['cldice']:.3f}", flush=True)
            results.append(result)
    report = study_report(results, size.protocols)
    write_json({"size": args.size, "seeds": args.seeds, "protocols": list(size.protocols), **report["json"],
                "runs": results}, args.out / "study.json")  # fmt: skip
    write_csv(results, args.out / "study.csv")
    write_text(report["markdown"] + "\n", args.out / "study.md")
    plot(results, args.out / "study.png")
    print(f"\n{report['markdown']}\n\nstudy finished in {time.perf_counter() - started:.0f} s; results in {args.out}/")
    return 0


def study_report(results: list[dict[str, Any]], protocols: tuple[str, ...]) -> dict[str, Any]:
    """Tables over all held-out scans and per protocol, and each arm's paired difference against Dice + CE."""
    table = summarize_runs(results)
    by_protocol = {name: summarize_runs(protocol_runs(results, name, protocols)) for name in protocols}
    sections = [f"All held-out scans ({' + '.join(protocols)}), mean ± std over seeds:\n\n{format_table(table)}"]
    if len(protocols) > 1:
        sections += [f"Protocol {name}:\n\n{format_table(rows)}" for name, rows in by_protocol.items()]
    paired = {}
    if BASELINE_ARM in table and len(table) > 1:
        paired = paired_summary(results, BASELINE_ARM, ("dice", "cldice"), protocols)
        sections.append(f"Paired differences (per seed × held-out patient; paired.py):\n\n"
                        f"{format_paired(paired, BASELINE_ARM)}")  # fmt: skip
    return {"json": {"arms": table, "by_protocol": by_protocol, "paired": paired}, "markdown": "\n\n".join(sections)}


if __name__ == "__main__":
    sys.exit(main())
