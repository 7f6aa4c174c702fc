"""`python -m syncas_jax.convert REF.pth OUT_DIR`: reference .pth → our checkpoint (also `-m syncas_jax.nets`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncas_jax.common.checkpoint import save_checkpoint
from syncas_jax.common.console import guarded
from syncas_jax.common.errors import InputError
from syncas_jax.nets.config import NORMS, ModelConfig
from syncas_jax.nets.reference import load_reference_model


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m syncas_jax.convert",
        description="Convert a SynCAS reference checkpoint (.pth, read with weights_only=True) "
        "into a syncas_jax checkpoint folder usable by infer and train.",
    )
    parser.add_argument("reference", type=Path, help="reference checkpoint (.pth)")
    parser.add_argument("output", type=Path, help="output checkpoint folder")
    parser.add_argument("--ngf", type=int, default=16, help="base channel count of the reference network")
    parser.add_argument("--depth", type=int, default=4, help="number of encoder levels")
    parser.add_argument("--norm", choices=NORMS, default="batch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.output.exists() and not args.overwrite:
        raise InputError(args.output, "already exists (use --overwrite to replace it)")
    try:
        model = ModelConfig(ngf=args.ngf, depth=args.depth, norm=args.norm)
    except ValueError as error:
        raise InputError(None, str(error)) from None
    variables, meta = load_reference_model(args.reference, model)
    save_checkpoint(args.output, variables, meta)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
