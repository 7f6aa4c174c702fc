"""Online synthesis: crop geometry, the offline engine's statistics on a crop, keys per (step, item)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import ndimage as ndi

from syncas_jax.common.nifti import volume_from_array
from syncas_jax.data.cache import preprocess_case
from syncas_jax.data.cta_cache import preprocess_cta_case
from syncas_jax.data.cta_loader import CtaGeometry, CtaPatchBatcher
from syncas_jax.data.online import OnlineRenderer
from syncas_jax.synth.ct import crop_band, crop_band_mask, detector_size, radon_transform
from syncas_jax.synth.engine import render_case
from syncas_jax.synth.phantom import phantom_affine
from syncas_jax.synth.texture import noise_std, nps_correlation, radial_nps, structure_means
from tests.data.cta_cases import LV_CENTRE, SPACING, cta_phantom

TARGET = (3.0, 0.8, 0.8)  # nnU-Net's separate z axis: nearest slices, in-plane unchanged
PATCH = (24, 48, 48)
ORIGIN = np.array([0, LV_CENTRE[0] - 24, LV_CENTRE[1] - 24])  # the patch centred on the left ventricle
VIEWS = 16  # per pipeline: 16 × 24 slices for the noise statistics


def test_crop_band_reads_the_full_slice_along_the_crop_rays():
    rng = np.random.default_rng(0)
    full = np.zeros((70, 64), np.float32)
    y0, x0, h, w = 9, 21, 30, 28
    full[y0 : y0 + h, x0 : x0 + w] = ndi.gaussian_filter(rng.normal(size=(h, w)), 2.0) * 100 + 50
    crop = full[y0 : y0 + h, x0 : x0 + w]
    offset = np.array([y0 + h // 2 - 70 // 2, x0 + w // 2 - 64 // 2])
    n_bins = detector_size(h, w)
    band = np.asarray(crop_band(radon_transform(full[:, :, None]), offset, n_bins))[..., 0]
    direct = np.asarray(radon_transform(crop[:, :, None]))[..., 0]
    # Exact at 0° and 90°; elsewhere linear interpolation between detector bins (a wrong shift: > 40 %).
    assert np.linalg.norm(band - direct) / np.linalg.norm(direct) < 0.02
    mask = np.asarray(crop_band_mask(detector_size(70, 64), offset, n_bins))
    sinogram = np.asarray(radon_transform(full[:, :, None]))[..., 0]
    assert np.abs(sinogram[~mask]).max() < 1e-3 * np.abs(sinogram).max()  # rays beside the band miss the crop
    assert mask.sum(axis=1).min() >= n_bins


@pytest.fixture(scope="module")
def renders():
    """Realistic renders of one case by both pipelines, after the same preprocessing: (offline, online, case)."""
    image, labels = cta_phantom((48, 96, 96))
    affine = phantom_affine(image.shape, SPACING)  # canonical: the cached arrays keep the phantom's layout

    def volume(array):
        return volume_from_array(array, SPACING, affine)

    offline = render_case(image, labels.astype(np.int16), 7, views=VIEWS, spacing=SPACING, chunk=16, realistic=True)
    ncct = preprocess_case([volume(v.image) for v in offline], volume((labels == 128).astype(np.uint8)), TARGET)
    case = preprocess_cta_case(volume(image), volume(labels), TARGET)
    geometry = CtaGeometry(TARGET, case.sinogram.shape[2], len(case.centreline), float(case.centreline[:, 3].max()),
                           "reference")  # fmt: skip
    batcher = CtaPatchBatcher(PATCH, geometry)
    arrays = {k: getattr(case, k) for k in ("hu", "organs", "label", "sinogram", "photons", "centreline")}
    batch = batcher([[{**arrays, "origin": ORIGIN}] * (VIEWS // 2)])
    render = jax.jit(OnlineRenderer(geometry, offsets=False))
    online = np.asarray(render(jax.random.key(3), batch)["views"]).reshape(VIEWS, *PATCH)
    region = tuple(slice(o, o + p) for o, p in zip(ORIGIN, PATCH))
    return ncct.views[(slice(None), *region)] * 200 + 50, online * 200 + 50, case, batcher, arrays, render


def test_online_views_have_the_offline_statistics(renders):
    offline, online, case, *_ = renders
    region = tuple(slice(o, o + p) for o, p in zip(ORIGIN, PATCH))
    organs = case.organs[region]
    ids = [0, 5, 118, 120]  # soft tissue, liver, myocardium, left ventricle (the coronary carries random plaques)
    means_off, means_on = structure_means(offline, organs, ids), structure_means(online, organs, ids)
    assert set(means_off) == set(ids)
    for i in ids:
        assert abs(means_off[i] - means_on[i]) < 3.0, (i, means_off[i], means_on[i])
    box = (slice(14, 34), slice(14, 34))  # inside the left ventricle, away from its edge
    assert np.all(organs[:, box[0], box[1]] == 120)
    std_off, std_on = noise_std(offline, box), noise_std(online, box)
    assert std_off > 1.0 and abs(std_on / std_off - 1) < 0.10, (std_off, std_on)
    assert nps_correlation(radial_nps(offline, box), radial_nps(online, box)) >= 0.95


def test_views_are_a_function_of_key_and_item(renders):
    *_, batcher, arrays, render = renders
    elsewhere = ORIGIN + np.array([0, 10, -8])
    items = [{**arrays, "origin": ORIGIN}] + [{**arrays, "origin": elsewhere}] * (VIEWS // 2 - 1)
    other = batcher([items])
    same = batcher([[{**arrays, "origin": ORIGIN}] * (VIEWS // 2)])
    a = np.asarray(render(jax.random.key(3), same)["views"])
    b = np.asarray(render(jax.random.key(3), other)["views"])
    c = np.asarray(render(jax.random.key(4), same)["views"])
    np.testing.assert_array_equal(a, np.asarray(render(jax.random.key(3), same)["views"]))
    np.testing.assert_array_equal(a[0], b[0])  # item 0 does not depend on the other items
    assert np.abs(a[1] - a[0]).mean() > 1e-3  # other items draw other noise
    assert np.abs(c[0] - a[0]).mean() > 1e-3  # another step key, another rendering


SHARDED_RENDER = """
import json, sys
import jax, numpy as np
from syncas_jax.common.nifti import volume_from_array
from syncas_jax.data.cta_cache import preprocess_cta_case
from syncas_jax.data.cta_loader import CtaGeometry, CtaPatchBatcher
from syncas_jax.data.online import OnlineRenderer
from syncas_jax.train.parallel import make_mesh, shard_batch
from tests.data.cta_cases import SPACING, cta_phantom
assert jax.device_count() == 2
image, labels = cta_phantom((8, 48, 48))
case = preprocess_cta_case(volume_from_array(image, SPACING), volume_from_array(labels, SPACING), (3.0, 0.8, 0.8))
geometry = CtaGeometry((3.0, 0.8, 0.8), case.sinogram.shape[2], len(case.centreline), 1.0, "reference")
arrays = {k: getattr(case, k) for k in ("hu", "organs", "label", "sinogram", "photons", "centreline")}
items = [{**arrays, "origin": np.array([0, y, x])} for y, x in ((4, 6), (10, 2))]
batch = CtaPatchBatcher((4, 24, 24), geometry)([items])
render = jax.jit(OnlineRenderer(geometry))
results = []
for devices in (jax.devices()[:1], jax.devices()):
    out = render(jax.random.key(7), shard_batch(batch, make_mesh(devices)))["views"]
    results.append((np.asarray(out), [s.device.id for s in out.addressable_shards], list(out.sharding.spec)[:1]))
(one, _, _), (two, shard_devices, spec) = results
print(json.dumps({"max_diff": float(np.abs(one - two).max()), "devices": shard_devices, "spec": spec}))
"""


@pytest.mark.slow
def test_each_device_renders_its_shard_of_the_batch():
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import CACHE_DIR
    from tests.paths import ROOT

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": CACHE_DIR}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", SHARDED_RENDER], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["spec"] == ["data"] and sorted(report["devices"]) == [0, 1]  # views stay sharded by item
    assert report["max_diff"] <= 1e-6  # the same views whether one device renders both items or each its own
