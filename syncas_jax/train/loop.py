"""The training loop: a short driver over named pieces (design §5).

    select cases → restore or init → make loaders → per epoch: run the steps → validate →
    (every test_every epochs) score the evaluation folder → record → save `latest` (and `best`)

Checkpoints hold the train state plus metadata: global step, history (`RunHistory`), the
sums of an interrupted epoch, the model architecture and the flat config. The training
stream is a function of the global step (the loader starts at global batch = step), so
`resume=True` continues bit for bit, and on any number of processes. Interruption is a
callable checked after every step (`should_stop`; by default Ctrl-C, deferred so a step is
never cut in half): the run saves `latest` at that step and raises KeyboardInterrupt.

Several processes (`jax.distributed`): every process runs this same loop; each loads its
slice of every global batch, takes part in every collective (steps, validation, checkpoint
saves), stops when any process asks to, and only the primary writes files and scores the
evaluation folder while the others wait for its Dice.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from syncas_jax.common.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from syncas_jax.common.errors import InputError
from syncas_jax.common.multihost import any_process, differing_processes, from_primary, is_primary, tree_from_primary
from syncas_jax.data.cache import cached_case_ids, read_dataset_info
from syncas_jax.data.loader import make_train_loader, make_val_loader, split_cases
from syncas_jax.data.orientation import checkpoint_orientation
from syncas_jax.nets.unet import SynCASNet
from syncas_jax.train.config import Config
from syncas_jax.train.evaluation import evaluate_folder
from syncas_jax.train.history import EpochSums, RunHistory
from syncas_jax.train.parallel import make_mesh, replicate, shard_batch
from syncas_jax.train.pretrained import pretrained_heads, read_pretrained, with_pretrained
from syncas_jax.train.state import (
    TrainState,
    create_train_state,
    learning_rate_schedule,
    make_model,
    state_from_tree,
    state_tree,
)
from syncas_jax.train.step import (
    StepFn,
    jit_train_step,
    jit_validation_counts,
    make_augment,
    pseudo_dice,
    step_key,
    validation_key,
)
from syncas_jax.train.synthesis import check_cache_kind, loader_parts, online_renderers, wanted_cache

StopFn = Callable[[int], bool]  # called with the global step after each step; True stops the run
LogFn = Callable[[str], None]
ProgressFn = Callable[[Iterable[Any], str, int], Iterable[Any]]  # (items, description, total) → items


@dataclass
class Run:
    """Everything that changes while training: the state, where it is, and what has been recorded."""

    config: Config
    mesh: Mesh
    model: SynCASNet
    state: TrainState | None  # None only while restore_or_init builds the run
    step: int
    history: RunHistory
    epoch_sums: EpochSums

    @property
    def out(self) -> Path:
        return Path(self.config.train.output_dir)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def epoch(self) -> int:
        """The 0-based epoch the next step belongs to."""
        return self.step // self.config.train.num_iterations_per_epoch


# ------------------------------------------------------------------------------ pieces


def cache_cases(config: Config, cache: str) -> list[str]:
    """The finished cases of one cache of the run; InputError naming it when there are none."""
    case_ids = cached_case_ids(cache, wanted_cache(config)) if Path(cache).is_dir() else []
    if not case_ids:
        raise InputError(cache, "no preprocessed cases found (run python -m syncas_jax.preprocess first)")
    return case_ids


def select_cases(config: Config) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) of the first cache: explicit val_cases, else a seeded val_fraction split."""
    data = config.data
    check_cache_kind(config)
    cache = data.caches[0]
    case_ids = cache_cases(config, cache)
    if data.val_cases:
        missing = sorted(set(data.val_cases) - set(case_ids))
        if missing:
            raise InputError(cache, f"validation cases not in the cache: {missing}")
        val_ids = sorted(data.val_cases)
        train_ids = [c for c in case_ids if c not in val_ids]
    else:
        train_ids, val_ids = split_cases(case_ids, data.val_fraction, config.train.seed)
    if not train_ids:
        raise InputError(cache, "no training cases left after the validation split")
    return train_ids, val_ids or train_ids


def mixed_caches(config: Config) -> list[tuple[str, list[str]]]:
    """(cache, every case) of the caches after the first: they add training patches only."""
    return [(cache, cache_cases(config, cache)) for cache in config.data.caches[1:]]


def one_view_notes(config: Config) -> list[str]:
    """A note per cache of one-view scans (labelled real NCCT) when its contrastive pair would be one array twice."""
    if config.augment is not None or not config.loss.weight or config.data.synthesis != "offline":
        return []
    notes = []
    for cache in config.data.caches:
        if (Path(cache) / "dataset.json").exists() and read_dataset_info(cache).get("num_views") == 1:
            notes.append(
                f"note: {cache} holds one view per case and augmentation is off, so the contrastive loss compares "
                "each scan with itself (set augmentated true to pair two augmentations, or contrastive_weight 0)"
            )
    return notes


def check_devices(config: Config, mesh: Mesh) -> None:
    if config.data.batch_size % jax.process_count():
        raise InputError(
            None,
            f"batch_size {config.data.batch_size} is not divisible by the number of processes ({jax.process_count()})",
        )
    if config.data.batch_size % mesh.size:
        raise InputError(
            None, f"batch_size {config.data.batch_size} is not divisible by the number of devices ({mesh.size})"
        )
    folder = config.train.evaluation_folder
    if folder and not Path(folder).is_dir():
        raise InputError(folder, "evaluation_folder not found")


def fresh_state(config: Config) -> Callable[[], TrainState]:
    """The run's initialisation, to call (or to `jax.eval_shape` for its shapes)."""
    return functools.partial(create_train_state, config, jax.random.key(config.train.seed))


def initial_state(config: Config) -> TrainState:
    """Fresh parameters and optimiser state. Several processes: the primary initialises, the others
    receive its state (as PyTorch DDP broadcasts rank 0's) instead of compiling the initialisation."""
    fresh = fresh_state(config)
    if jax.process_count() == 1:
        return fresh()
    template = fresh() if is_primary() else jax.eval_shape(fresh)
    return state_from_tree(template, tree_from_primary(state_tree(template)))


def pretrained_state(config: Config, log: LogFn) -> TrainState:
    """A fresh state carrying the weights of `init_checkpoint` (optimiser, step and heads it lacks: fresh)."""
    source = config.train.init_checkpoint
    variables, meta = read_pretrained(source, config.model)
    state = with_pretrained(initial_state(config), variables, source)
    heads = pretrained_heads(variables)
    log(f"initialised from {source}: U-Net weights" + (f" and heads {', '.join(heads)}" if heads else ", fresh heads"))
    trained = checkpoint_orientation(meta)
    if trained != config.data.orientation:
        log(f"note: {source} was trained on '{trained}' orientation, this run uses '{config.data.orientation}'")
    return state


def restore_or_init(config: Config, mesh: Mesh, resume: bool, log: LogFn) -> Run:
    """A fresh run (from `init_checkpoint`'s weights when set), or the one saved in checkpoints/latest when
    `resume` and it exists (a resumed fine-tuning run ignores `init_checkpoint`: its weights moved on).

    A resumed state is restored into the shapes of a fresh one (`jax.eval_shape`: nothing to compile).
    """
    run = Run(config, mesh, make_model(config), None, 0, RunHistory(), EpochSums())
    latest = run.checkpoints / "latest"
    if resume and is_checkpoint(latest):
        template = jax.eval_shape(fresh_state(config))
        tree, meta = load_checkpoint(latest, target=state_tree(template))
        run.state = state_from_tree(template, tree)
        run.step = int(meta["step"])
        run.history = RunHistory.from_json(meta)
        run.epoch_sums = EpochSums.from_json(meta.get("partial"))
        log(f"resumed from {latest} at step {run.step}")
    else:
        if resume:
            log(
                f"no checkpoint at {latest}; starting "
                + ("from init_checkpoint" if config.train.init_checkpoint else "from scratch")
            )
        run.state = pretrained_state(config, log) if config.train.init_checkpoint else initial_state(config)
    if differing_processes(np.asarray([run.step], np.int32)):
        raise InputError(latest, "processes resumed at different steps: output_dir must be on a file system all share")
    run.state = replicate(run.state, mesh)
    return run


@dataclass
class Loaders:
    train: Any  # grain DatasetIterator of this process's training batches
    val: Any  # grain IterDataset, identical on every pass


def make_loaders(config: Config, train_ids: list[str], val_ids: list[str], step: int) -> Loaders:
    """This process's share of the training stream from global batch `step` on, and of the validation batches."""
    data = config.data
    shard = {"shard_index": jax.process_index(), "shard_count": jax.process_count()}
    train_parts, val_parts = loader_parts(config, train_ids, val_ids)
    mix = {"mix": mixed_caches(config), "weights": data.cache_weights, "num_views": 2} if not train_parts else {}
    train = make_train_loader(
        data.caches[0],
        train_ids,
        data.patch_size,
        data.batch_size,
        seed=config.train.seed,
        oversample_foreground=data.foreground_probability,
        workers=data.workers,
        start_batch=step,
        forced_batches=data.force_foreground_epochs * config.train.num_iterations_per_epoch,
        **shard,
        **train_parts,
        **mix,
    )
    val = make_val_loader(
        data.caches[0],
        val_ids,
        data.patch_size,
        data.batch_size,
        num_batches=max(config.train.num_val_iterations_per_epoch, 1),
        seed=config.train.seed + 1,
        oversample_foreground=data.foreground_probability,
        **shard,
        **val_parts,
    )
    return Loaders(iter(train), val)


class StepCache:
    """One jitted step per (negatives, pseudo-negatives) setting: they double halfway through training."""

    def __init__(self, run: Run):
        self._run = run
        self.augment = make_augment(run.config.augment)
        self.render, _ = online_renderers(run.config)
        self._steps: dict[tuple[int, int], StepFn] = {}

    def __call__(self, epoch: int) -> StepFn:
        negatives = self._run.config.negatives_at(epoch)
        if negatives not in self._steps:
            config = self._run.config
            self._steps[negatives] = jit_train_step(
                self._run.model, config.loss, negatives, self.augment, config.segmentation, self.render,
                config.train.freeze_encoder,
            )  # fmt: skip
        return self._steps[negatives]


def checkpoint_meta(run: Run, partial: EpochSums | None) -> dict[str, Any]:
    return {
        "step": run.step,
        **run.history.to_json(),
        "partial": None if partial is None else partial.to_json(),
        "rng": np.asarray(jax.random.key_data(jax.random.key(run.config.train.seed))).tolist(),
        "model": run.config.model.architecture(),
        "orientation": run.config.data.orientation,
        "init_checkpoint": run.config.train.init_checkpoint,
        "config": run.config.to_flat(),
    }


def save(run: Run, partial: EpochSums | None = None, *, best: bool = False) -> None:
    """Save `latest` (and `best`): every process takes part, the primary writes."""
    meta = checkpoint_meta(run, partial)
    save_checkpoint(run.checkpoints / "latest", state_tree(run.state), meta)
    if best:
        save_checkpoint(run.checkpoints / "best", state_tree(run.state), meta)


def run_epoch(run: Run, loaders: Loaders, steps: StepCache, should_stop: StopFn, progress: ProgressFn) -> EpochSums:
    """The remaining steps of the current epoch. When `should_stop` says so, saves `latest` and raises."""
    iterations = run.config.train.num_iterations_per_epoch
    epoch, start = divmod(run.step, iterations)
    sums, run.epoch_sums = run.epoch_sums, EpochSums()
    started = time.perf_counter() - sums.seconds
    step_fn = steps(epoch)
    description = f"epoch {epoch + 1}/{run.config.train.num_epochs}"
    for _ in progress(range(start, iterations), description, iterations - start):
        batch = shard_batch(next(loaders.train), run.mesh)
        run.state, metrics = step_fn(run.state, batch, step_key(run.config.train.seed, run.step))
        run.step += 1
        sums.add({k: float(v) for k, v in jax.device_get(metrics).items()})
        if any_process(should_stop(run.step)):
            sums.seconds = time.perf_counter() - started
            save(run, sums)
            raise KeyboardInterrupt(f"stopped at step {run.step}")
    sums.seconds = time.perf_counter() - started
    return sums


def validate(run: Run, loaders: Loaders, validate_fn: Callable) -> float:
    """Pseudo-Dice of the validation batches (counts summed over every batch, then one Dice)."""
    counts = np.zeros(3)
    for index, batch in enumerate(loaders.val):
        key = validation_key(run.config.train.seed, index)
        counts += np.asarray(jax.device_get(validate_fn(run.state, shard_batch(batch, run.mesh), key)))
    return pseudo_dice(counts)


def end_epoch(run: Run, sums: EpochSums, pseudo: float, log: LogFn) -> None:
    """Record the finished epoch, score the evaluation folder when due, save and log."""
    config = run.config
    epoch = run.step // config.train.num_iterations_per_epoch  # 1-based: the epoch just finished
    record = {
        "epoch": epoch,
        "step": run.step,
        **sums.means(config.train.num_iterations_per_epoch),
        "lr": float(learning_rate_schedule(config.train)((epoch - 1) * config.train.num_iterations_per_epoch)),
        "negatives": list(config.negatives_at(epoch - 1)),
        "seconds": sums.seconds,
    }
    if config.train.evaluation_folder and epoch % config.train.test_every == 0:
        record["eval_dice"] = evaluation_dice(run, epoch)
        log(f"epoch {epoch}: evaluation folder Dice {record['eval_dice']}")
    improved = run.history.add(record, pseudo, config.train.pseudo_dice_ema)
    save(run, best=improved)
    if is_primary():
        run.history.write(run.out)
    record = run.history.last
    log(
        f"epoch {epoch}: loss {record['loss']:.4f} (dice_ce {record['dice_ce']:.4f}, contrastive "
        f"{record['contrastive']:.4f}), pseudo-Dice {pseudo:.4f}, EMA {run.history.ema:.4f}"
        f"{' (best)' if improved else ''}"
    )


def evaluation_dice(run: Run, epoch: int) -> float | None:
    """Mean Dice over the evaluation folder, scored by the primary (report in evaluation/); the others wait for it."""
    dice = None
    if is_primary():
        report = evaluate_folder(run.state, run.config, run.out / "evaluation" / f"epoch_{epoch:04d}.json")
        dice = report["summary"].get("dice", {}).get("mean")
    return from_primary(dice)


@contextlib.contextmanager
def ctrl_c_requested() -> Iterator[StopFn]:
    """A StopFn that turns Ctrl-C (SIGINT) into "stop after this step" (main thread only)."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda step: False
        return

    def handler(signum: int, frame: Any) -> None:
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda step: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------------ the driver


def train_and_evaluate(
    config: Config,
    *,
    resume: bool = False,
    log: LogFn | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Train per `config`, validating each epoch; checkpoints `latest` and `best` under output_dir.

    log(line): one line per epoch and event (default: silent); progress(items, description, total)
    wraps each epoch's steps (e.g. a progress bar); should_stop(step) is asked after every step
    (default: was Ctrl-C pressed?) — when True the run saves `latest` and raises KeyboardInterrupt.
    Returns the last epoch's record.
    """
    log = log or (lambda line: None)
    progress = progress or (lambda items, description, total: items)
    train_ids, val_ids = select_cases(config)
    for line in one_view_notes(config):
        log(line)
    mesh = make_mesh()
    check_devices(config, mesh)
    run = restore_or_init(config, mesh, resume, log)
    loaders = make_loaders(config, train_ids, val_ids, run.step)
    steps = StepCache(run)
    validate_fn = jit_validation_counts(run.model, online_renderers(config)[1])
    with contextlib.ExitStack() as stack:
        stop = should_stop or stack.enter_context(ctrl_c_requested())
        while run.step < config.train.total_steps:
            try:
                sums = run_epoch(run, loaders, steps, stop, progress)
            except KeyboardInterrupt:
                log(f"interrupted: saved {run.checkpoints / 'latest'} at step {run.step}; continue with --resume")
                raise
            end_epoch(run, sums, validate(run, loaders, validate_fn), log)
    return run.history.last
