"""The train state (parameters, batch statistics, optimiser) and the optimiser the reference uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import serialization
from flax.training import train_state

from syncas_jax.common.precision import compute_dtype
from syncas_jax.nets.unet import SynCASNet, build_model
from syncas_jax.train.config import Config, TrainConfig


class TrainState(train_state.TrainState):
    batch_stats: Any = None


#: Blocks of the contracting path (`freeze_encoder`): the stem, every encoder level, the bottleneck.
ENCODER_PREFIXES = ("stem", "enc", "bottleneck")


def is_encoder_block(name: str) -> bool:
    return name.startswith(ENCODER_PREFIXES)


def encoder_labels(params: Any) -> Any:
    """ "frozen" for every leaf of a U-Net encoder block (params["unet"][stem|enc*|bottleneck*]), else "train"."""

    def label(path: tuple, _: Any) -> str:
        keys = [getattr(entry, "key", None) for entry in path]
        return "frozen" if len(keys) > 1 and keys[0] == "unet" and is_encoder_block(str(keys[1])) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def keep_encoder_stats(old: Any, new: Any) -> Any:
    """Batch statistics `new` with the encoder blocks' entries of `old` (a frozen encoder keeps its statistics)."""
    if new is None:
        return new
    unet = {name: old["unet"][name] if is_encoder_block(name) else value for name, value in new["unet"].items()}
    return {**new, "unet": unet}


def make_model(config: Config) -> SynCASNet:
    """The network of a training run, computing in the run's precision."""
    return build_model(config.model, compute_dtype(config.train.precision, "train"))


def learning_rate_schedule(train: TrainConfig) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Polynomial decay per epoch: lr · (1 − epoch / num_epochs)^0.9, epoch = step // iterations."""

    def schedule(count: jnp.ndarray) -> jnp.ndarray:
        epoch = count // train.num_iterations_per_epoch
        return train.initial_lr * (1 - epoch / train.num_epochs) ** 0.9

    return schedule


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """Clip at global norm 12 → weight decay (PyTorch-style, added to the gradient) → SGD Nesterov 0.99
    (or Adam with `optimizer` "adam"), both at the polynomial learning-rate schedule. With
    `freeze_encoder` the encoder blocks (`encoder_labels`) are left out of all of it and never move.

    grad_clip_scope "unet" clips (and measures the norm of) the U-Net's gradients only, leaving the
    projection heads' as they are (the reference clips its network's parameters only).
    """
    clip = optax.clip_by_global_norm(train.grad_clip_norm)
    if train.grad_clip_scope == "unet":
        clip = optax.masked(clip, lambda params: {name: name == "unet" for name in params})
    optimizer = optax.chain(
        clip,
        optax.add_decayed_weights(train.weight_decay),
        optax.sgd(learning_rate_schedule(train), momentum=train.momentum, nesterov=True)
        if train.optimizer == "sgd"
        else optax.adam(learning_rate_schedule(train)),
    )
    if train.freeze_encoder:  # the encoder gets no update (no decay either); clipping sees the rest only
        return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, encoder_labels)
    return optimizer


def create_train_state(config: Config, key: jax.Array) -> TrainState:
    """Freshly initialised parameters (He normal convs, PyTorch-default heads) and optimiser state."""
    model = make_model(config)
    size = config.model.size_multiple
    init = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, size, 1)), method=SynCASNet.forward_projected))
    variables = init(key)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats"),
        tx=make_optimizer(config.train),
    )
    # A strongly typed step counter, as restored from a checkpoint: a resumed run reuses the compiled steps.
    return state.replace(step=jnp.zeros((), jnp.int32))


def state_tree(state: TrainState) -> dict[str, Any]:
    """The state as a plain pytree (what checkpoints store)."""
    return serialization.to_state_dict(state)


def state_from_tree(template: TrainState, tree: dict[str, Any]) -> TrainState:
    return serialization.from_state_dict(template, tree)


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """Flax variables of the network: {'params'} plus {'batch_stats'} with batch norm."""
    return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}
