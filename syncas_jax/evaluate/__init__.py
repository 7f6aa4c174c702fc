"""Evaluation stage: pair predictions with references, the metric table, overlays."""
