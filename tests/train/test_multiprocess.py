"""Training in two JAX processes joined over 127.0.0.1 (CPU, one device each), as on two hosts.

They must train like one process with two devices (same global batches, same losses within f32
noise), write one set of checkpoints, and resume an interrupted run on two processes or on one.
Bad launches (unreachable coordinator, missing processes, different configs, a batch the
processes do not divide) end every process with one clear line, never a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from syncas_jax.common import checkpoint as ckpt
from syncas_jax.train.__main__ import main as train_main
from syncas_jax.train.config import load_config
from syncas_jax.train.loop import train_and_evaluate
from tests.conftest import CACHE_DIR
from tests.paths import ROOT
from tests.train.cases import TINY, write_evaluation_folder, write_tiny_cache

# The CLI, with a deterministic interruption: the last process alone asks to stop after global step
# argv[1] (0: never), as Ctrl-C in one terminal would; every process must stop there.
DRIVER = textwrap.dedent(
    """
    import functools, sys
    import jax
    from syncas_jax.train import loop
    stop = int(sys.argv[1])
    def should_stop(step):
        return step == stop and jax.process_index() == jax.process_count() - 1
    if stop:
        loop.train_and_evaluate = functools.partial(loop.train_and_evaluate, should_stop=should_stop)
    from syncas_jax.train.__main__ import main
    sys.exit(main(sys.argv[2:]))
    """
)
LAUNCH_TIMEOUT_S = 400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(devices: int) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": CACHE_DIR}
    env.pop("XLA_FLAGS", None)
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def launch(per_process: list[list[str]], *, devices: int = 1, stop: int = 0) -> list[subprocess.CompletedProcess]:
    """Start one process per argument list at once (the CLI), wait for all; kill them all on a time-out."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(stop), *args],
            cwd=ROOT,
            env=environment(devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in per_process
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def processes(config: Path, count: int, *extra: str, timeout_s: int = 120) -> list[list[str]]:
    """Command lines of `count` processes of one run (one process: no coordinator)."""
    if count == 1:
        return [["--config", str(config), "--no-progress", *extra]]
    port = free_port()
    return [
        ["--config", str(config), "--no-progress", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
         str(count), "--process-id", str(i), "--init-timeout", str(timeout_s), *extra]
        for i in range(count)
    ]  # fmt: skip


def write_config(folder: Path, name: str, **changes) -> Path:
    """The tiny run as one epoch of 4 steps (one step function to compile: each fresh process compiles
    it again, since JAX's persistent cache is written by process 0 only and on CPU its keys differ
    per process)."""
    path = folder / f"{name}.json"
    values = {
        **TINY,
        "num_epochs": 1,
        "num_iterations_per_epoch": 4,
        "data_dir": str(folder / "cache"),
        "output_dir": str(folder / name),
        "evaluation_folder": str(folder / "evaluation"),
        "test_every": 1,
        **changes,
    }
    path.write_text(json.dumps(values))
    return path


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_ok(results: list[subprocess.CompletedProcess], code: int = 0) -> None:
    for i, result in enumerate(results):
        assert result.returncode == code, f"process {i}: {result.stderr[-3000:]}"


def assert_same_losses(run: Path, reference: Path) -> None:
    got, expected = records(run), records(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected] == [1]
    for a, b in zip(got, expected):
        for key in ("loss", "dice_ce", "contrastive", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)


def assert_same_weights(run: Path, reference: Path) -> None:
    a, meta_a = ckpt.load_checkpoint(run / "checkpoints" / "latest")
    b, meta_b = ckpt.load_checkpoint(reference / "checkpoints" / "latest")
    assert meta_a["step"] == meta_b["step"] == 4
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a["params"])[0], jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multiprocess")
    write_tiny_cache(folder / "cache")
    write_evaluation_folder(folder / "evaluation")
    return folder


@pytest.mark.slow
def test_two_processes_train_like_one_with_two_devices_and_resume_on_two_or_one(folder):
    one = folder / "one"
    assert_ok(launch(processes(write_config(folder, "one"), 1), devices=2))

    two = folder / "two"  # stopped after step 3 of 4 (asked by process 1 only), `latest` saved there
    assert_ok(launch(processes(write_config(folder, "two"), 2), stop=3), code=130)
    assert ckpt.load_meta(two / "checkpoints" / "latest")["step"] == 3
    shutil.copytree(two, folder / "two_then_one")

    results = launch(processes(write_config(folder, "two"), 2, "--resume"))
    assert_ok(results)
    assert_same_losses(two, one)
    assert_same_weights(two, one)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best", "latest"]
    assert not [p for p in two.rglob("*") if "process_1" in p.name]  # one copy, written by the primary
    assert (two / "evaluation" / "epoch_0001.json").is_file() and "eval_dice" in records(two)[0]
    assert "epoch 1:" in results[0].stdout and "epoch" not in results[1].stdout  # logs once

    config, _ = load_config(write_config(folder, "two_then_one"))  # and on one process (this one, one device)
    train_and_evaluate(config, resume=True, progress=False, log=lambda _: None)
    assert_same_losses(folder / "two_then_one", one)
    assert_same_weights(folder / "two_then_one", one)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_processes_with_different_configs_stop_at_once(folder):
    config = write_config(folder, "mismatch")
    first, second = processes(config, 2)
    results = launch([first, [*second, "--set", "num_epochs=3"]])
    assert_ok(results, code=2)
    for result in results:
        assert len(error_lines(result)) == 1 and "[1] were started with a different config" in result.stderr
        assert "Traceback" not in result.stderr


def test_batch_not_divisible_by_processes(folder):
    results = launch(processes(write_config(folder, "odd", batch_size=3), 2))
    assert_ok(results, code=2)
    for result in results:
        assert error_lines(result) == ["error: batch_size 3 is not divisible by the number of processes (2)"]


def test_missing_processes_time_out_with_the_address(folder):
    (alone,) = launch(processes(write_config(folder, "alone"), 2, timeout_s=2)[:1])
    assert alone.returncode == 2
    assert error_lines(alone) and "all 2 processes did not join within 2 s" in error_lines(alone)[-1]
    assert "127.0.0.1:" in error_lines(alone)[-1]


def test_unreachable_coordinator_is_one_clear_line(folder, capsys):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = str(write_config(folder, "unreachable"))
    argv = ["--config", config, "--coordinator", address, "--num-processes", "2", "--process-id", "1"]
    assert train_main([*argv, "--init-timeout", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {address}: coordinator not reachable within 1 s (Connection refused); is process 0 running there, "
        "and do the address, the port and the firewall allow it?"
    ]
    assert train_main(["--config", config, "--coordinator", address]) == 2
    assert "--coordinator needs --num-processes (or JAX_NUM_PROCESSES) and --process-id" in capsys.readouterr().err
    assert train_main(["--config", config, "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"]) == 2
    assert "nohost: coordinator address must be HOST:PORT" in capsys.readouterr().err
