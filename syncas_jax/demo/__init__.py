"""The end-to-end phantom demo (`python -m syncas_jax.demo`)."""
