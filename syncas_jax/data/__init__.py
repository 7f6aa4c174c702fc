"""Data stage: `preprocess` (cache building, and its inverse for inference), `loader` (grain
patches over the cache), `augment` (JAX augmentation on the device), `layout` (shared constants)."""
