"""Calcium reports of CT scans with a coronary mask (`python -m syncas_jax.calcium`); see `report`."""
