"""Texture statistics of renderings: how online synthesis is checked against the offline engine.

All take a stack of renderings (N, Z, Y, X) in HU (e.g. views × slices of one patch) and measure,
on regions the caller chooses, the statistics issue 15 asks to match: per-structure mean HU, the
noise standard deviation and the in-plane noise power spectrum (NPS) of a homogeneous region.
"""

from __future__ import annotations

import numpy as np


def structure_means(images: np.ndarray, labels: np.ndarray, ids: list[int]) -> dict[int, float]:
    """Mean HU per label id over every image (N, Z, Y, X) of the voxels where labels (Z, Y, X) == id."""
    images = np.asarray(images, np.float64)
    return {i: float(images[:, labels == i].mean()) for i in ids if np.any(labels == i)}


def roi_noise(images: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """Zero-mean noise (N·Z, h, w) of an in-plane box of a homogeneous region: each slice's box minus its mean."""
    rois = np.asarray(images, np.float64)[(Ellipsis, *box)]
    rois = rois.reshape(-1, *rois.shape[-2:])
    return rois - rois.mean(axis=(1, 2), keepdims=True)


def noise_std(images: np.ndarray, box: tuple[slice, slice]) -> float:
    """RMS over slices of the in-box standard deviation (HU)."""
    return float(np.sqrt(np.mean(roi_noise(images, box) ** 2)))


def radial_nps(images: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """In-plane noise power spectrum of the box, averaged over slices and over rings of integer radius
    in frequency-index units (0 … min(h, w)//2), HU²·pixel²: |FFT(noise)|² / (h·w)."""
    noise = roi_noise(images, box)
    h, w = noise.shape[1:]
    power = (np.abs(np.fft.fft2(noise)) ** 2).mean(axis=0) / (h * w)
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    ring = np.rint(np.hypot(fy * min(h, w) / h, fx * min(h, w) / w)).astype(int)
    n = min(h, w) // 2 + 1
    return np.bincount(ring.ravel(), power.ravel(), n)[:n] / np.maximum(np.bincount(ring.ravel(), None, n)[:n], 1)


def nps_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two radial NPS profiles, without the zero-frequency ring (0 by construction)."""
    return float(np.corrcoef(a[1:], b[1:])[0, 1])
