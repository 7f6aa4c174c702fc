"""`python -m syncas_jax.train --config FILE [--resume] [--init CHECKPOINT]`: train the SynCAS U-Net (design §5).

`--init CHECKPOINT` starts from a trained model's weights (our checkpoint folder or a reference .pth),
e.g. to fine-tune on labelled real scans (`preprocess --labelled`; the shipped `finetune` config; design §12).

Several processes (GPU nodes, a TPU pod slice, or several processes on one machine): start
the same command once per process, each with its own id, e.g. on two nodes

    python -m syncas_jax.train --config FILE --coordinator node0:1234 --num-processes 2 --process-id 0
    python -m syncas_jax.train --config FILE --coordinator node0:1234 --num-processes 2 --process-id 1

or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; where JAX detects the
cluster itself (SLURM, Open MPI, TPU pods) `--distributed` is enough. Each process loads
its own share of every batch and XLA reduces gradients across all devices; process 0
writes the checkpoints, logs and plots (output_dir must be on a file system all hosts share).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from syncas_jax.common.console import guarded
from syncas_jax.common.console import progress as console_progress
from syncas_jax.common.errors import InputError
from syncas_jax.train.config import load_config
from syncas_jax.train.distributed import DEFAULT_TIMEOUT_S, check_same_config, join, process_group


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m syncas_jax.train", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        required=True,
        help="JSON config file (reference config.json keys accepted) or the name of a shipped config "
        "(demo, reference, reference_original, finetune)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/latest")
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from the weights of a trained model: our checkpoint folder or a reference .pth (weights only: "
        "optimiser, step and history start fresh; config key init_checkpoint)",
    )
    parser.add_argument(
        "--keep-orientation",
        action="store_true",
        help="train in the files' own axis order, as the reference (config key orientation 'file'; the caches must "
        "have been made with preprocess --keep-orientation); the default turns every scan to LPS first",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, VALUE as JSON (e.g. --set num_epochs=2 data_dir='\"cache\"')",
    )
    group = parser.add_argument_group("several processes (multi-host)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N", help="number of processes (JAX_NUM_PROCESSES)")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 … N-1 (JAX_PROCESS_ID)")
    group.add_argument(
        "--distributed", action="store_true", help="let JAX detect what is not given from the cluster (SLURM, TPU pod)"
    )
    group.add_argument(
        "--init-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"wait this long for the coordinator and every process (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    return parser.parse_args(argv)


def parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError(None, f"--set expects KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare string
    return overrides


def exit_on_timeout(message: str) -> None:
    """Called from a timer thread while jax.distributed waits for peers: one line, exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.init:
        overrides["init_checkpoint"] = args.init
    if args.keep_orientation:
        overrides["orientation"] = "file"
    config, ignored = load_config(args.config, overrides)
    group = process_group(
        args.coordinator, args.num_processes, args.process_id, auto_detect=args.distributed, timeout_s=args.init_timeout
    )
    join(group, on_timeout=exit_on_timeout)
    check_same_config(config, args.resume)
    import jax

    from syncas_jax.train.loop import train_and_evaluate  # after jax.distributed.initialize

    primary = jax.process_index() == 0
    if ignored and primary:
        print(f"note: ignoring reference config keys not used here: {', '.join(ignored)}", file=sys.stderr)
    if primary:
        print(
            f"devices: {jax.device_count()} x {jax.devices()[0].platform} in {jax.process_count()} process(es); "
            f"output: {config.train.output_dir}"
        )
    record = train_and_evaluate(
        config,
        resume=args.resume,
        log=print if primary else lambda _: None,
        progress=console_progress if primary and not args.no_progress else None,
    )
    if primary:
        print(f"done: {json.dumps(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
