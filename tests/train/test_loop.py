"""Training: exact resume, data-parallel equivalence, checkpoints that survive failures, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from syncas_jax.common import checkpoint as ckpt
from syncas_jax.common.errors import InputError
from syncas_jax.train import loop as trainer
from syncas_jax.train.__main__ import main as train_main
from syncas_jax.train.config import config_from_dict
from tests.conftest import CACHE_DIR
from tests.paths import ROOT
from tests.train.cases import TINY, write_evaluation_folder, write_tiny_cache


def tiny_config(tmp_path: Path, name: str, **changes):
    config, _ = config_from_dict(
        {**TINY, "data_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / name), **changes}
    )
    return config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    write_tiny_cache(folder / "cache")
    write_evaluation_folder(folder / "evaluation")
    return folder


def final_params(run_dir: Path):
    tree, meta = ckpt.load_checkpoint(run_dir / "checkpoints" / "latest")
    return tree, meta


@pytest.mark.slow
def test_interrupted_run_resumes_bit_for_bit(cache):
    evaluation = {"evaluation_folder": str(cache / "evaluation"), "test_every": 2}
    straight = tiny_config(cache, "straight", **evaluation)
    trainer.train_and_evaluate(straight)

    interrupted = tiny_config(cache, "interrupted", **evaluation)
    with pytest.raises(KeyboardInterrupt):  # stopped after step 3 (the first of epoch 2)
        trainer.train_and_evaluate(interrupted, should_stop=lambda step: step == 3)
    _, meta = final_params(Path(interrupted.train.output_dir))
    assert meta["step"] == 3 and meta["partial"]["count"] == 1

    trainer.train_and_evaluate(interrupted, resume=True)
    a, meta_a = final_params(Path(straight.train.output_dir))
    b, meta_b = final_params(Path(interrupted.train.output_dir))
    assert meta_a["step"] == meta_b["step"] == 4
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert meta_a["history"] == [
        {**r, "seconds": meta_a["history"][i]["seconds"]} for i, r in enumerate(meta_b["history"])
    ]

    run = Path(straight.train.output_dir)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["loss"]) and 0 <= r["val_pseudo_dice"] <= 1 for r in lines)
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ckpt.is_checkpoint(run / "checkpoints" / "best")
    report = json.loads((run / "evaluation" / "epoch_0002.json").read_text())
    assert set(report["cases"]) == {"scan01"} and 0 <= report["summary"]["dice"]["mean"] <= 1
    assert lines[1]["eval_dice"] == report["summary"]["dice"]["mean"] and "eval_dice" not in lines[0]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "latest"
    ckpt.save_checkpoint(target, {"w": np.arange(3.0)}, {"step": 1})

    class FullDisk:
        def save(self, *args, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "_checkpointer", lambda: FullDisk())
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(target, {"w": np.zeros(3)}, {"step": 2})
    monkeypatch.undo()
    tree, meta = ckpt.load_checkpoint(target)
    assert meta == {"step": 1}
    np.testing.assert_array_equal(tree["w"], np.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_empty_cache_is_a_clear_error(tmp_path):
    (tmp_path / "cache").mkdir()
    with pytest.raises(InputError, match="no preprocessed cases"):
        trainer.train_and_evaluate(tiny_config(tmp_path, "run"))


def test_cli_bad_config_is_one_line(tmp_path, capsys):
    assert train_main(["--config", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing.json'}: config file not found"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"batch_sise": 4}))
    assert train_main(["--config", str(bad)]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from syncas_jax.train.config import config_from_dict
    from syncas_jax.train.parallel import make_mesh, replicate, shard_batch
    from syncas_jax.train.state import create_train_state, make_model
    from syncas_jax.train.step import jit_train_step, step_key
    from syncas_jax.common.errors import InputError
    tiny = json.loads(sys.argv[1])
    config, _ = config_from_dict({**tiny, "batch_size": 4})
    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    label = np.zeros((4, 16, 32, 32), np.int16)
    label[:, 3:13, 8:13, 8:13] = 1
    label[:, 5:9, 20:24, 18:30] = 2
    label[1, :, :3] = -1
    views = (rng.normal(size=(4, 2, 16, 32, 32)) + 2.0 * (label > 0)[:, None]).astype(np.float32)
    batch = {"views": views, "label": label}
    model = make_model(config)
    initial = jax.device_get(create_train_state(config, jax.random.key(0)))
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = make_mesh(devices)
        state = replicate(create_train_state(config, jax.random.key(0)), mesh)
        step = jit_train_step(model, config.loss, (5, 1))
        state, metrics = step(state, shard_batch(batch, mesh), step_key(0, 0))
        results.append((jax.device_get((state.params, state.batch_stats)), float(metrics["loss"])))
    (one, l1), (four, l4) = results
    # Per array: |one - four| relative to the size of that array's update in this step. The
    # gradients of the first convolutions pass through batch-norm's mean subtraction, which
    # cancels; different f32 summation orders on 1 vs 4 devices then show at ~1e-3 of the update.
    worst_update, worst_abs = 0.0, 0.0
    before = jax.tree.leaves((initial.params, initial.batch_stats))
    for a, b, p in zip(jax.tree.leaves(one), jax.tree.leaves(four), before):
        diff = float(np.max(np.abs(a - b)))
        worst_abs = max(worst_abs, diff)
        worst_update = max(worst_update, diff / max(float(np.max(np.abs(a - p))), 1e-12))
    print(json.dumps({"max_abs_diff": worst_abs, "max_diff_over_update": worst_update, "loss_1": l1, "loss_4": l4}))
    """
)


@pytest.mark.slow
def test_four_devices_equal_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
    }
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, json.dumps(TINY)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["max_abs_diff"] <= 1e-4
    assert report["max_diff_over_update"] <= 1e-2
    assert report["loss_1"] == pytest.approx(report["loss_4"], rel=1e-5)


def test_batch_not_divisible_by_devices(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from syncas_jax.train.__main__ import main
        sys.exit(main(["--config", {str(tmp_path / "c.json")!r}]))
        """
    )
    write_tiny_cache(tmp_path / "cache", cases=2)
    (tmp_path / "c.json").write_text(
        json.dumps({**TINY, "batch_size": 3, "data_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "o")})
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "batch_size 3 is not divisible by the number of devices (2)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_online_synthesis_run_resumes_bit_for_bit(tmp_path):
    from syncas_jax.data.cta_cache import preprocess_cta_folder
    from tests.data.cta_cases import write_cta_case

    for index in range(3):
        write_cta_case(tmp_path / "cta", f"cta{index}", (16, 40, 40))
    preprocess_cta_folder(tmp_path / "cta", tmp_path / "cache", (3.0, 0.8, 0.8))
    # Dice + CE only (no contrastive sampling): what is tested here is the rendering's keys and the loader state.
    online = {"synthesis": "online", "spacing": [3.0, 0.8, 0.8], "patch_size": [8, 32, 32], "num_epochs": 1,
              "num_iterations_per_epoch": 3, "oversample_foreground_percent": 1.0,
              "contrastive_weight": 0.0}  # fmt: skip
    straight = tiny_config(tmp_path, "straight", **online)
    trainer.train_and_evaluate(straight, progress=False, log=lambda _: None)
    interrupted = tiny_config(tmp_path, "interrupted", **online)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(interrupted, progress=False, log=lambda _: None, should_stop=lambda step: step == 2)
    trainer.train_and_evaluate(interrupted, resume=True, progress=False, log=lambda _: None)
    a, meta_a = final_params(Path(straight.train.output_dir))
    b, meta_b = final_params(Path(interrupted.train.output_dir))
    assert meta_a["step"] == meta_b["step"] == 3
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    record = meta_a["history"][-1]
    assert np.isfinite(record["loss"]) and record["skipped"] == 0 and 0 <= record["val_pseudo_dice"] <= 1
    assert record["val_pseudo_dice"] == meta_b["history"][-1]["val_pseudo_dice"]
