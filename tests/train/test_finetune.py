"""Fine-tuning: `--init` from our checkpoint and from a reference .pth, architecture mismatch, freeze_encoder,
one-view (labelled) caches mixed with synthetic ones, and an interrupted fine-tuning run resuming bit for bit."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from syncas_jax.common import checkpoint as ckpt
from syncas_jax.common.errors import InputError
from syncas_jax.data.cache import PreprocessedCase, branch_labels, foreground_locations, write_cached_case
from syncas_jax.data.loader import make_train_loader
from syncas_jax.train import loop as trainer
from syncas_jax.train.__main__ import main as train_main
from syncas_jax.train.config import config_from_dict
from syncas_jax.train.parallel import make_mesh
from tests.train.cases import TINY, write_tiny_cache

PATCH = TINY["patch_size"]


def tiny_config(folder: Path, name: str, **changes):
    raw = {**TINY, "data_dir": str(folder / "cache"), "output_dir": str(folder / name), **changes}
    return config_from_dict(raw)[0]


def write_one_view_cache(folder: Path, cases: int = 2, shape=(20, 40, 40)) -> list[str]:
    """Labelled-scan style cases: one view each (V = 1), one bright tube."""
    ids = []
    for index in range(cases):
        z, y, x = np.indices(shape)
        mask = (y - 20 + index) ** 2 + (x - 20) ** 2 <= 5
        views = (np.random.default_rng(10 + index).normal(0, 0.3, shape) + 1.5 * mask)[None].astype(np.float32)
        label = branch_labels(mask)
        properties = {"original_shape": list(shape), "num_views": 1}
        write_cached_case(
            folder, f"real{index}", PreprocessedCase(views, label, foreground_locations(label), properties)
        )
        ids.append(f"real{index}")
    return ids


def leaves(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def assert_same_leaves(a, b) -> None:
    a, b = leaves(a), leaves(b)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny cache, a one-view cache and a model trained on the tiny cache for 2 epochs."""
    folder = tmp_path_factory.mktemp("finetune")
    write_tiny_cache(folder / "cache")
    write_one_view_cache(folder / "real")
    trainer.train_and_evaluate(tiny_config(folder, "pretrain"))
    return folder


def init(config):
    return trainer.restore_or_init(config, make_mesh(), resume=False, log=lambda _: None)


def test_init_from_our_checkpoint_takes_the_weights_only(pretrained):
    source = pretrained / "pretrain" / "checkpoints" / "latest"
    tree, meta = ckpt.load_checkpoint(source)
    assert meta["step"] == 4 and meta["history"]
    config = tiny_config(pretrained, "init", init_checkpoint=str(source), initial_lr=0.001)
    run = init(config)
    assert_same_leaves(run.state.params, tree["params"])
    assert_same_leaves(run.state.batch_stats, tree["batch_stats"])
    fresh = init(tiny_config(pretrained, "fresh", initial_lr=0.001))
    assert_same_leaves(run.state.opt_state, fresh.state.opt_state)  # optimiser: fresh
    assert run.step == 0 and int(run.state.step) == 0 and not run.history.records
    changed = [k for k, v in leaves(fresh.state.params).items() if not np.array_equal(v, leaves(tree["params"])[k])]
    assert changed  # the source's weights differ from a fresh initialisation: the comparison means something


def test_init_from_a_reference_pth_takes_exactly_its_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from tests import torch_reference as ref

    torch.manual_seed(0)
    net, heads = ref.ReferenceUNet(), ref.make_heads()
    with torch.no_grad():
        ref.randomize_batchnorm_stats(net, torch.Generator().manual_seed(1))
    saved = ref.save_reference_checkpoint(tmp_path / "ref.pth", net, heads)
    write_tiny_cache(tmp_path / "cache", cases=2, shape=(32, 32, 32))
    reference_net = {"ngf": 16, "depth": 4, "head_bias": False, "patch_size": [32, 32, 32], "num_anchor": 8}
    run = init(tiny_config(tmp_path, "run", **reference_net, init_checkpoint=str(tmp_path / "ref.pth")))

    # The reference's module indices (tests/torch_reference.py): conv, BatchNorm = conv + 1.
    convs = {"stem": 0, "bottleneck_conv1": 31, "bottleneck_conv2": 34}
    for level, start in enumerate((3, 10, 17, 24), 1):
        convs.update({f"enc{level}_conv1": start, f"enc{level}_conv2": start + 3})
    for stage, start in enumerate((37, 44, 51, 58), 1):
        convs.update({f"dec{stage}_conv1": start + 1, f"dec{stage}_conv2": start + 4})
    weights = {k: v.numpy() for k, v in saved["network_weights"].items()}
    unet, stats = run.state.params["unet"], run.state.batch_stats["unet"]
    assert sorted(unet) == sorted([*convs, "head"])
    for name, index in convs.items():
        np.testing.assert_array_equal(
            unet[name]["conv"]["kernel"], weights[f"model.{index}.weight"].transpose(2, 3, 4, 1, 0)
        )
        np.testing.assert_array_equal(unet[name]["norm"]["scale"], weights[f"model.{index + 1}.weight"])
        np.testing.assert_array_equal(unet[name]["norm"]["bias"], weights[f"model.{index + 1}.bias"])
        np.testing.assert_array_equal(stats[name]["norm"]["mean"], weights[f"model.{index + 1}.running_mean"])
        np.testing.assert_array_equal(stats[name]["norm"]["var"], weights[f"model.{index + 1}.running_var"])
    np.testing.assert_array_equal(unet["head"]["kernel"], weights["model.65.weight"].transpose(2, 3, 4, 1, 0))
    head_weights = {k: v.numpy() for k, v in saved["projection_heads_weights"].items()}
    for k in range(4):
        for ours, theirs in (("fc1", 0), ("fc2", 2)):
            layer = run.state.params[f"head{k}"][ours]
            np.testing.assert_array_equal(layer["kernel"], head_weights[f"{k}.mlp.{theirs}.weight"].T)
            np.testing.assert_array_equal(layer["bias"], head_weights[f"{k}.mlp.{theirs}.bias"])
    assert run.step == 0 and int(run.state.step) == 0  # the .pth's epoch and optimiser state are not taken

    # The tiny network is not the reference's: one error naming the file and both architectures.
    with pytest.raises(InputError) as error:
        init(tiny_config(tmp_path, "tiny", init_checkpoint=str(tmp_path / "ref.pth")))
    message = str(error.value)
    assert str(tmp_path / "ref.pth") in message
    assert "(ngf 16, depth 4, norm batch, head_bias False)" in message
    assert "(ngf 4, depth 3, norm batch, head_bias False)" in message


def test_architecture_mismatch_is_one_line_naming_both(pretrained, capsys):
    source = pretrained / "pretrain" / "checkpoints" / "latest"
    config = pretrained / "wide.json"
    config.write_text(
        __import__("json").dumps(
            {**TINY, "ngf": 8, "data_dir": str(pretrained / "cache"), "output_dir": str(pretrained / "wide")}
        )
    )
    assert train_main(["--config", str(config), "--init", str(source), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == (
        f"error: {source}: its network (ngf 4, depth 3, norm batch, head_bias False) is not the config's "
        "(ngf 8, depth 3, norm batch, head_bias False); set ngf in the config to the checkpoint's values"
    )


def test_one_view_cases_fill_both_views_and_a_mixed_stream_is_a_function_of_the_item(pretrained):
    real, synthetic = pretrained / "real", pretrained / "cache"
    options = {"seed": 4, "oversample_foreground": 1.0, "workers": 0, "num_views": 2}
    mixed = {"mix": [(synthetic, ["case00", "case01", "case02"])], "weights": [1.0, 1.0]}
    alone = next(iter(make_train_loader(real, ["real0", "real1"], PATCH, 2, **options)))
    np.testing.assert_array_equal(alone["views"][:, 0], alone["views"][:, 1])  # the one view, twice

    stream = iter(make_train_loader(real, ["real0", "real1"], PATCH, 2, **options, **mixed))
    batches = [next(stream) for _ in range(20)]
    one_view = [np.array_equal(v[0], v[1]) for b in batches for v in b["views"]]
    assert any(one_view) and not all(one_view)  # both caches appear (synthetic views differ in noise)
    later = iter(make_train_loader(real, ["real0", "real1"], PATCH, 2, start_batch=15, **options, **mixed))
    for expected in batches[15:]:
        got = next(later)
        np.testing.assert_array_equal(got["views"], expected["views"])
        np.testing.assert_array_equal(got["label"], expected["label"])


@pytest.mark.slow
def test_interrupted_fine_tuning_resumes_bit_for_bit_with_a_frozen_encoder(pretrained):
    source = pretrained / "pretrain" / "checkpoints" / "latest"
    recipe = {
        "init_checkpoint": str(source), "freeze_encoder": True, "initial_lr": 0.005, "augmentated": True,
        "data_dir": [str(pretrained / "real"), str(pretrained / "cache")], "data_weights": [0.7, 0.3],
        "val_fraction": 0.0,
    }  # fmt: skip
    straight = tiny_config(pretrained, "ft_straight", **recipe)
    trainer.train_and_evaluate(straight)
    interrupted = tiny_config(pretrained, "ft_interrupted", **recipe)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(interrupted, should_stop=lambda step: step == 3)
    trainer.train_and_evaluate(interrupted, resume=True)
    a, meta_a = ckpt.load_checkpoint(Path(straight.train.output_dir) / "checkpoints" / "latest")
    b, meta_b = ckpt.load_checkpoint(Path(interrupted.train.output_dir) / "checkpoints" / "latest")
    assert meta_a["step"] == meta_b["step"] == 4
    assert_same_leaves(a, b)

    start, _ = ckpt.load_checkpoint(source)
    moved = {name: not np.array_equal(np.asarray(a["params"]["unet"][name]["conv"]["kernel"]),
                                      np.asarray(start["params"]["unet"][name]["conv"]["kernel"]))
             for name in a["params"]["unet"] if name != "head"}  # fmt: skip
    frozen = [n for n in moved if n.startswith(("stem", "enc", "bottleneck"))]
    assert frozen and not any(moved[n] for n in frozen)  # the encoder kept its weights ...
    assert all(moved[n] for n in moved if n.startswith("dec"))  # ... the decoder moved
    for name in frozen:  # ... and its batch statistics
        assert_same_leaves(a["batch_stats"]["unet"][name], start["batch_stats"]["unet"][name])
