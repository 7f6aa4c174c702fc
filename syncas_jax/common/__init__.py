"""Helpers every stage shares: user-facing errors, NIfTI volumes, atomic files, checkpoints, the CLI edge."""
