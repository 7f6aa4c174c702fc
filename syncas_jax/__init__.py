"""syncas_jax: coronary artery segmentation on non-contrast CT trained on synthetic data.

Pipeline: synth (CTA -> synthetic NCCT) -> data (preprocess, loader, augment) ->
nets + losses -> train -> infer -> evaluate.
"""

__version__ = "0.1.0"
