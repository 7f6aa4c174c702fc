"""Config loading: the reference file loads as is, bad keys and types are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncas_jax.config import REFERENCE_IGNORED_KEYS, TrainConfig, config_from_dict, load_config
from syncas_jax.io import InputError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "config.json"
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def reference_config_path() -> Path:
    if REFERENCE.exists():
        return REFERENCE
    return CONFIGS / "reference_original.json"  # the same file, kept in the repo


def test_reference_config_loads_as_is():
    config, ignored = load_config(reference_config_path())
    raw = json.loads(reference_config_path().read_text())
    assert set(ignored) == set(raw) & REFERENCE_IGNORED_KEYS
    assert config.alpha == raw["alpha"] == 0.9
    assert config.patch_size == (32, 224, 224)
    assert config.spacing == (3.0, 0.349609375, 0.349609375)
    assert config.branch_aware is True and config.batch_size == 4 and config.num_epochs == 100


@pytest.mark.parametrize("name", ["demo.json", "reference.json"])
def test_shipped_configs_load(name):
    config, _ = load_config(CONFIGS / name)
    assert isinstance(config, TrainConfig)


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
