"""Config loading: the reference file loads as is, bad keys and types are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncas_jax.common.errors import InputError
from syncas_jax.train.config import REFERENCE_IGNORED_KEYS, Config, config_from_dict, load_config, shipped_configs
from tests.paths import CONFIGS, SHARED_REFERENCE_CONFIG


def reference_config_path() -> Path:
    if SHARED_REFERENCE_CONFIG.exists():
        return SHARED_REFERENCE_CONFIG
    return CONFIGS / "reference_original.json"  # the same file, kept in the repo


def test_reference_config_loads_as_is():
    config, ignored = load_config(reference_config_path())
    raw = json.loads(reference_config_path().read_text())
    assert set(ignored) == set(raw) & REFERENCE_IGNORED_KEYS
    assert config.loss.alpha == raw["alpha"] == 0.9
    assert config.data.patch_size == (32, 224, 224)
    assert config.data.spacing == (3.0, 0.349609375, 0.349609375)
    assert config.loss.branch_aware is True and config.data.batch_size == 4 and config.train.num_epochs == 100


@pytest.mark.parametrize("name", ["demo", "reference", "reference_original", "finetune"])
def test_shipped_configs_load_by_name_and_path(name):
    by_name, _ = load_config(name)
    by_path, _ = load_config(CONFIGS / f"{name}.json")
    assert isinstance(by_name, Config) and by_name == by_path
    assert name in shipped_configs()


def test_finetune_is_the_reference_recipe_at_a_tenth_of_the_rate_and_a_fifth_of_the_steps():
    finetune, reference = load_config("finetune")[0], load_config("reference")[0]
    assert finetune.model == reference.model and finetune.loss == reference.loss
    assert finetune.train.initial_lr == reference.train.initial_lr / 10
    assert finetune.train.total_steps * 5 == reference.train.total_steps
    assert finetune.augment is not None  # the contrastive pair of a one-view scan (design §12)


def test_several_caches_with_weights():
    config, _ = config_from_dict({"data_dir": ["real", "synthetic"], "data_weights": [3, 1]})
    assert config.data.caches == ("real", "synthetic") and config.data.cache_weights == (0.75, 0.25)
    assert config_from_dict(config.to_flat())[0] == config
    assert config_from_dict({"data_dir": "one"})[0].data.caches == ("one",)
    with pytest.raises(InputError, match="data_weights has 1 entries for 2 caches"):
        config_from_dict({"data_dir": ["a", "b"], "data_weights": [1]})
    with pytest.raises(InputError, match="'data_dir' must be a string"):
        config_from_dict({"data_dir": 3})


def test_flat_keys_round_trip():
    config, _ = load_config("demo")
    again, ignored = config_from_dict(config.to_flat())
    assert again == config and not ignored


def test_augmentation_acts_in_the_configured_spacing():
    config, _ = config_from_dict({"spacing": [2.0, 0.5, 0.5]})
    assert config.augment is not None and config.augment.spacing == (2.0, 0.5, 0.5)
    off, _ = config_from_dict({"augmentated": 0})
    assert off.augment is None


def test_unknown_key_names_a_close_match():
    with pytest.raises(InputError, match=r"unknown config key 'num_epoch' \(did you mean 'num_epochs'\?\)"):
        config_from_dict({"num_epoch": 3})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"batch_size": "4"}, "'batch_size' must be an integer"),
        ({"temperature": "hot"}, "'temperature' must be a number"),
        ({"patch_size": [32, 224]}, "'patch_size' must have 3 entries"),
        ({"patch_size": [30, 224, 224]}, "multiples of 16"),
        ({"branch_aware": 2}, "'branch_aware' must be true/false"),
        ({"precision": "float16"}, "'precision' must be one of"),
        ({"pos_per_anchor": 2}, "pos_per_anchor must be 1"),
    ],
)
def test_bad_values_are_named(raw, message):
    with pytest.raises(InputError, match=message):
        config_from_dict(raw)


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_config(bad)


def test_negatives_double_after_half_the_epochs():
    config, _ = config_from_dict({"num_epochs": 10, "neg_per_anchor": 5, "pseudo_neg_per_anchor": 1})
    assert [config.negatives_at(e) for e in (0, 4, 5, 9)] == [(5, 1), (5, 1), (10, 2), (10, 2)]


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()  # e.g. the demo's own output folder in the working directory
    monkeypatch.chdir(tmp_path)
    config, _ = load_config("demo")
    assert config == load_config(CONFIGS / "demo.json")[0]


def test_reference_config_reproduces_the_reference_codes_behaviour():
    """reference.json: alpha 0.9 as the reference's file says, but its loss applies α 0.5 / τ 0.3; every
    patch on foreground; the U-Net's gradients clipped only."""
    config, _ = load_config("reference")
    kwargs = config.loss.loss_kwargs((5, 1))
    assert config.loss.alpha == 0.9 and kwargs["alpha"] == 0.5 and kwargs["temperature"] == 0.3
    assert config.data.force_foreground and config.data.foreground_probability == 1.0
    assert config.data.oversample_foreground_percent == 0.33  # kept as written, never acting
    assert config.train.grad_clip_scope == "unet"
    ours, _ = config_from_dict({"alpha": 0.9})
    assert ours.loss.loss_kwargs((5, 1))["alpha"] == 0.9 and ours.data.foreground_probability == 0.33
    with pytest.raises(InputError, match="'grad_clip_scope' must be one of"):
        config_from_dict({"grad_clip_scope": "heads"})


def test_segmentation_loss_key():
    config, _ = config_from_dict({"ce_foreground_weight": 5})
    assert config.segmentation.ce_foreground_weight == 5.0
    assert config_from_dict({})[0].segmentation.ce_foreground_weight == 1.0  # the reference's plain mean
    with pytest.raises(InputError, match="ce_foreground_weight must be > 0"):
        config_from_dict({"ce_foreground_weight": 0})
