"""Inference stage: checkpoint → predictor, whole scans in, masks in the input's geometry out."""
