"""SynCAS training: one TrainState, one jitted step, data-parallel over a device mesh.

Total loss = ½ (DiceCE(view 1) + DiceCE(view 2)) + 0.1 Σ_taps contrastive(view 1, view 2).
The step is a pure function of (state, batch, step key); everything random is derived
from (seed, global step), so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from syncas_jax.config import TrainConfig
from syncas_jax.io import InputError
from syncas_jax.losses.contrastive import multi_tap_contrastive_loss
from syncas_jax.losses.dice_ce import dice_ce_loss
from syncas_jax.nets.unet import SynCASNet

Batch = dict[str, jnp.ndarray]  # {"views": (B, V, Z, Y, X) float32, "label": (B, Z, Y, X) int}


class TrainState(train_state.TrainState):
    batch_stats: Any = None


def compute_dtype(precision: str) -> Any:
    """bfloat16 compute on accelerators for 'auto', float32 on CPU."""
    if precision == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(precision)


def make_model(config: TrainConfig) -> SynCASNet:
    return SynCASNet(
        ngf=config.ngf,
        depth=config.depth,
        norm=config.norm,
        dtype=compute_dtype(config.precision),
        conv_impl=config.conv_impl,
        head_bias=config.head_bias,
    )


def model_spec(config: TrainConfig) -> dict[str, Any]:
    """The architecture as checkpoint metadata stores it ({ngf, depth, norm, head_bias})."""
    return {"ngf": config.ngf, "depth": config.depth, "norm": config.norm, "head_bias": config.head_bias}


def learning_rate_schedule(config: TrainConfig) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Polynomial decay per epoch: lr · (1 − epoch / num_epochs)^0.9, epoch = step // iterations."""

    def schedule(count: jnp.ndarray) -> jnp.ndarray:
        epoch = count // config.num_iterations_per_epoch
        return config.initial_lr * (1 - epoch / config.num_epochs) ** 0.9

    return schedule


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip at global norm 12 → weight decay (PyTorch-style, added to the gradient) → SGD Nesterov 0.99."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(learning_rate_schedule(config), momentum=config.momentum, nesterov=True),
    )


def create_train_state(config: TrainConfig, key: jax.Array) -> TrainState:
    model = make_model(config)
    size = 2**config.depth
    init = jax.jit(functools.partial(model.init, method=SynCASNet.forward_projected))
    variables = init(key, jnp.zeros((1, size, size, size, 1)))
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats"),
        tx=make_optimizer(config),
    )


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


def loss_and_updates(
    params: Any,
    batch_stats: Any,
    batch: Batch,
    key: jax.Array,
    *,
    model: SynCASNet,
    config: TrainConfig,
    negatives: tuple[int, int],
) -> tuple[jnp.ndarray, tuple[dict[str, jnp.ndarray], Any]]:
    """Total SynCAS loss of one batch in train mode; returns (loss, (metrics, new batch stats))."""
    label = batch["label"]
    target = (label > 0).astype(jnp.int32)
    outputs = []
    for view in range(2):  # two passes: batch-norm statistics per view, as the reference
        x = batch["views"][:, view, ..., None]
        if batch_stats is None:
            outputs.append(model.apply(_variables(params, None), x, train=True))
        else:
            out, updates = model.apply(_variables(params, batch_stats), x, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
            outputs.append(out)
    (logits1, taps1), (logits2, taps2) = outputs
    segmentation = 0.5 * (dice_ce_loss(logits1, target) + dice_ce_loss(logits2, target))

    def head(tap: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
        return lambda f: model.apply({"params": params}, f, tap, method=SynCASNet.project)

    contrastive = multi_tap_contrastive_loss(
        key,
        taps1,
        taps2,
        label,
        projections=[head(k) for k in range(4)],
        num_anchor=config.num_anchor,
        neg_per_anchor=negatives[0],
        pseudo_neg_per_anchor=negatives[1],
        temperature=config.temperature,
        alpha=config.alpha,
        branch_aware=config.branch_aware,
    )
    loss = segmentation + config.contrastive_weight * contrastive
    return loss, ({"loss": loss, "dice_ce": segmentation, "contrastive": contrastive}, batch_stats)


def train_step(
    state: TrainState,
    batch: Batch,
    key: jax.Array,
    *,
    model: SynCASNet,
    config: TrainConfig,
    negatives: tuple[int, int],
    augment: Callable[[jax.Array, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]] | None = None,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimisation step. `augment(key, views, label)` runs first, on device, when given."""
    key_augment, key_loss = jax.random.split(key)
    if augment is not None:
        views, label = augment(key_augment, batch["views"], batch["label"])
        batch = {"views": views, "label": label}
    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)
    (_, (metrics, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch, key_loss, model=model, config=config, negatives=negatives
    )
    grad_norm = optax.tree.norm(grads)
    # A batch of constant patches (e.g. two random patches entirely in air) makes every batch-norm
    # variance ~0; each such layer multiplies the backward pass by ~1/sqrt(eps) and the gradient
    # overflows. Such a step is skipped (parameters and optimizer state kept) instead of turning
    # every parameter into NaN; `skipped` counts it.
    finite = jnp.isfinite(grad_norm)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    kept = state.replace(step=updated.step, batch_stats=batch_stats)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    metrics = {**metrics, "grad_norm": jnp.where(finite, grad_norm, 0.0), "skipped": 1.0 - finite}
    return state, metrics


def validation_counts(state: TrainState, batch: Batch, *, model: SynCASNet) -> jnp.ndarray:
    """Eval-mode (TP, FP, FN) of the foreground class on view 1 of a validation batch."""
    logits, _ = model.apply(_variables(state.params, state.batch_stats), batch["views"][:, 0, ..., None], train=False)
    prediction = jnp.argmax(logits, axis=-1) == 1
    target = batch["label"] > 0
    tp = jnp.sum(prediction & target)
    fp = jnp.sum(prediction & ~target)
    fn = jnp.sum(~prediction & target)
    return jnp.stack([tp, fp, fn]).astype(jnp.float32)


def pseudo_dice(counts: np.ndarray) -> float:
    """Global foreground Dice 2TP / (2TP + FP + FN) from summed counts; 0 when undefined."""
    tp, fp, fn = (float(c) for c in counts)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator > 0 else 0.0


# ------------------------------------------------------------------ devices


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1D mesh over all (or the given) devices with axis 'data'."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Split the leading (batch) axis over the mesh's 'data' axis."""
    sharding = NamedSharding(mesh, P("data"))
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }  # multi-host: each process feeds its own slice of the global batch


def jit_train_step(
    model: SynCASNet,
    config: TrainConfig,
    negatives: tuple[int, int],
    augment: Callable | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jnp.ndarray]]]:
    """The jitted step for one (negatives, pseudo-negatives) setting; the state buffer is donated."""
    step = functools.partial(train_step, model=model, config=config, negatives=negatives, augment=augment)
    return jax.jit(step, donate_argnums=(0,))


def jit_validation_counts(model: SynCASNet) -> Callable[[TrainState, Batch], jnp.ndarray]:
    return jax.jit(functools.partial(validation_counts, model=model))


def step_key(seed: int, step: int) -> jax.Array:
    """The RNG key of global step `step` (augmentation and contrastive sampling)."""
    return jax.random.fold_in(jax.random.key(seed), step)


__all__ = [
    "TrainState",
    "create_train_state",
    "train_step",
    "jit_train_step",
    "validation_counts",
    "pseudo_dice",
    "make_mesh",
    "replicate",
    "shard_batch",
]


# ------------------------------------------------------------------ the training loop


def _state_tree(state: TrainState) -> dict[str, Any]:
    return serialization.to_state_dict(state)


def _epoch_summary(sums: dict[str, float], count: int) -> dict[str, float]:
    return {k: v / max(count, 1) for k, v in sums.items()}


def _make_augment(config: TrainConfig) -> Callable | None:
    if not config.augmentated:
        return None
    from syncas_jax.data.augment import AugmentConfig, augment_batch

    augment_config = AugmentConfig()
    return lambda key, views, label: augment_batch(key, views, label, augment_config)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn Ctrl-C (SIGINT) into a flag checked between steps, so a step is never cut in half."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)


def train_and_evaluate(
    config: TrainConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train per `config`, validating each epoch; checkpoints `latest` and `best` under output_dir.

    Returns the last epoch's record. Ctrl-C saves `latest` at the current step and re-raises.
    """
    from syncas_jax.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
    from syncas_jax.data.loader import make_train_loader, make_val_loader, split_cases
    from syncas_jax.data.preprocess import cached_case_ids
    from syncas_jax.plots import plot_progress

    out = Path(config.output_dir)
    latest_dir, best_dir = out / "checkpoints" / "latest", out / "checkpoints" / "best"
    case_ids = cached_case_ids(config.data_dir) if Path(config.data_dir).is_dir() else []
    if not case_ids:
        raise InputError(config.data_dir, "no preprocessed cases found (run python -m syncas_jax.preprocess first)")
    if config.val_cases:
        missing = sorted(set(config.val_cases) - set(case_ids))
        if missing:
            raise InputError(config.data_dir, f"validation cases not in the cache: {missing}")
        val_ids = sorted(config.val_cases)
        train_ids = [c for c in case_ids if c not in val_ids]
    else:
        train_ids, val_ids = split_cases(case_ids, config.val_fraction, config.seed)
    if not train_ids:
        raise InputError(config.data_dir, "no training cases left after the validation split")

    if config.evaluation_folder and not Path(config.evaluation_folder).is_dir():
        raise InputError(config.evaluation_folder, "evaluation_folder not found")
    mesh = make_mesh()
    if config.batch_size % mesh.size:
        raise InputError(
            None, f"batch_size {config.batch_size} is not divisible by the number of devices ({mesh.size})"
        )
    local_batch = config.batch_size // jax.process_count()
    model = make_model(config)
    state = create_train_state(config, jax.random.key(config.seed))
    meta: dict[str, Any] = {"step": 0, "ema": None, "best_ema": None, "history": [], "loader": None, "partial": None}
    if resume and is_checkpoint(latest_dir):
        tree, meta = load_checkpoint(latest_dir, target=_state_tree(state))
        state = serialization.from_state_dict(state, tree)
        log(f"resumed from {latest_dir} at step {meta['step']}")
    elif resume:
        log(f"no checkpoint at {latest_dir}; starting from scratch")
    state = replicate(state, mesh)

    train_loader = make_train_loader(
        config.data_dir,
        train_ids,
        config.patch_size,
        local_batch,
        seed=config.seed,
        oversample_foreground=config.oversample_foreground_percent,
        workers=config.workers,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    train_iter = iter(train_loader)
    if meta["loader"] is not None:
        train_iter.set_state(meta["loader"])
    val_ids = val_ids or train_ids
    val_loader = make_val_loader(
        config.data_dir,
        val_ids,
        config.patch_size,
        local_batch,
        num_batches=max(config.num_val_iterations_per_epoch, 1),
        seed=config.seed + 1,
        oversample_foreground=config.oversample_foreground_percent,
    )
    augment = _make_augment(config)
    steps: dict[tuple[int, int], Callable] = {}
    validate_fn = jit_validation_counts(model)
    schedule = learning_rate_schedule(config)
    iterations = config.num_iterations_per_epoch
    record: dict[str, Any] = meta["history"][-1] if meta["history"] else {}

    def checkpoint_meta(step: int, partial: dict[str, Any] | None) -> dict[str, Any]:
        return {
            **meta,
            "step": step,
            "loader": train_iter.get_state(),
            "partial": partial,
            "rng": np.asarray(jax.random.key_data(jax.random.key(config.seed))).tolist(),
            "model": model_spec(config),
            "config": config.to_json(),
        }

    step = int(meta["step"])
    while step < config.num_epochs * iterations:
        epoch, start = divmod(step, iterations)
        negatives = config.negatives_at(epoch)
        if negatives not in steps:
            steps[negatives] = jit_train_step(model, config, negatives, augment)
        partial = meta["partial"] or {"sums": {}, "count": 0, "seconds": 0.0}
        sums: dict[str, float] = dict(partial["sums"])
        started = time.perf_counter() - partial["seconds"]
        bar = tqdm(
            range(start, iterations), desc=f"epoch {epoch + 1}/{config.num_epochs}", disable=not progress, leave=False
        )
        with _deferred_interrupt() as interrupted:
            for _ in bar:
                batch = shard_batch(next(train_iter), mesh)
                state, metrics = steps[negatives](state, batch, step_key(config.seed, step))
                step += 1
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if interrupted():
                    count = step - epoch * iterations
                    partial = {"sums": sums, "count": count, "seconds": time.perf_counter() - started}
                    save_checkpoint(latest_dir, _state_tree(state), checkpoint_meta(step, partial))
                    log(f"interrupted: saved {latest_dir} at step {step}; continue with --resume")
                    raise KeyboardInterrupt
        counts = np.zeros(3)
        for batch in val_loader:
            counts += np.asarray(jax.device_get(validate_fn(state, shard_batch(batch, mesh))))
        dice = pseudo_dice(counts)
        decay = config.pseudo_dice_ema
        ema = dice if meta["ema"] is None else decay * meta["ema"] + (1 - decay) * dice
        record = {
            "epoch": epoch + 1,
            "step": step,
            **_epoch_summary(sums, iterations),
            "lr": float(schedule(epoch * iterations)),
            "val_pseudo_dice": dice,
            "val_pseudo_dice_ema": ema,
            "negatives": list(negatives),
            "seconds": time.perf_counter() - started,
        }
        if config.evaluation_folder and (epoch + 1) % config.test_every == 0 and jax.process_index() == 0:
            report = evaluate_folder(state, config, out / "evaluation" / f"epoch_{epoch + 1:04d}.json")
            record["eval_dice"] = report["summary"].get("dice", {}).get("mean")
            log(f"epoch {epoch + 1}: evaluation folder Dice {record['eval_dice']}")
        meta["history"] = [*meta["history"], record]
        meta["ema"] = ema
        improved = meta["best_ema"] is None or ema > meta["best_ema"]
        if improved:
            meta["best_ema"] = ema
        meta["partial"] = None
        if jax.process_index() == 0:
            save_checkpoint(latest_dir, _state_tree(state), checkpoint_meta(step, None))
            if improved:
                save_checkpoint(best_dir, _state_tree(state), checkpoint_meta(step, None))
            write_history(meta["history"], out / "metrics.jsonl")
            plot_progress(meta["history"], out / "progress.png")
        log(
            f"epoch {epoch + 1}: loss {record['loss']:.4f} (dice_ce {record['dice_ce']:.4f}, contrastive "
            f"{record['contrastive']:.4f}), pseudo-Dice {dice:.4f}, EMA {ema:.4f}{' (best)' if improved else ''}"
        )
    return record


def evaluate_folder(state: TrainState, config: TrainConfig, path: Path) -> dict[str, Any]:
    """Segment every `{id}.img.nii.gz` of config.evaluation_folder with the current weights (no TTA)
    and score it against `{id}.label.nii.gz`; writes the per-case metrics and summary to `path` (JSON)."""
    from syncas_jax.io import read_volume, write_json
    from syncas_jax.metrics import case_metrics, summarize
    from syncas_jax.predict import predict_volume, predictor_from_state

    folder = Path(config.evaluation_folder or "")
    images = sorted(folder.glob("*.img.nii.gz"))
    if not images:
        raise InputError(folder, "evaluation_folder holds no {id}.img.nii.gz scans")
    tree = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    predict_fn = predictor_from_state(tree, model_spec(config))
    cases = {}
    for image_path in images:
        case_id = image_path.name[: -len(".img.nii.gz")]
        volume = read_volume(image_path)
        reference = read_volume(folder / f"{case_id}.label.nii.gz")
        prediction = predict_volume(volume, predict_fn, spacing=config.spacing, patch_size=config.patch_size, tta=False)
        cases[case_id] = case_metrics(prediction.segmentation, reference.array, volume.spacing, volume.array)
    report = {"cases": cases, "summary": summarize(list(cases.values()))}
    write_json(_finite(report), path)
    return report


def _finite(value: Any) -> Any:
    """JSON-safe copy: inf/NaN → None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_history(history: list[dict[str, Any]], path: Path) -> None:
    """All epoch records as JSON lines, rewritten atomically."""
    from syncas_jax.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
