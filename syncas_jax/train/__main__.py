"""`python -m syncas_jax.train --config FILE [--resume]`: train the SynCAS U-Net (design §5).

Multi-host (several machines, e.g. a TPU pod slice or GPU nodes): start the same command
on every host with `--distributed`; `jax.distributed.initialize()` reads the coordinator
from the environment (TPU / SLURM / Open MPI set it automatically; otherwise set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID). Each host then loads its
own share of every batch and XLA reduces gradients across all devices.
"""

from __future__ import annotations

import argparse
import json
import sys

from syncas_jax.common.console import guarded
from syncas_jax.common.console import progress as console_progress
from syncas_jax.common.errors import InputError
from syncas_jax.train.config import load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m syncas_jax.train", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        required=True,
        help="JSON config file (reference config.json keys accepted) or the name of a shipped config "
        "(demo, reference, reference_original)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/latest")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, VALUE as JSON (e.g. --set num_epochs=2 data_dir='\"cache\"')",
    )
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
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


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config, ignored = load_config(args.config, parse_overrides(args.set))
    if ignored:
        print(f"note: ignoring reference config keys not used here: {', '.join(ignored)}", file=sys.stderr)
    import jax

    if args.distributed:
        jax.distributed.initialize()
    from syncas_jax.train.loop import train_and_evaluate  # after jax.distributed.initialize

    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; output: {config.train.output_dir}")
    record = train_and_evaluate(
        config, resume=args.resume, log=print, progress=None if args.no_progress else console_progress
    )
    print(f"done: {json.dumps(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
