"""HU reassignment, phantom, plaques and whole-case rendering of the data engine."""

from __future__ import annotations

import cc3d
import edt
import jax
import numpy as np
import pytest
from scipy import ndimage
from scipy.ndimage import binary_dilation
from scipy.spatial import KDTree
from skimage.morphology import disk

from syncas_jax.common.arteries import OTHER_ID
from syncas_jax.synth import hu_table
from syncas_jax.synth.engine import case_seed, render_case, render_view
from syncas_jax.synth.hu import draw_hu_values, reassign_hu
from syncas_jax.synth.phantom import draw_anatomy, make_phantom, make_phantom_case
from syncas_jax.synth.plaques import (
    CALCIUM_LOADS,
    MAX_PLAQUES,
    calcium_lesion_map,
    coronary_centreline,
    insert_plaques,
)

SHAPE, SPACING = (16, 64, 64), (1.0, 0.5, 0.5)
TABLE_IDS = {entry[0] for entry in hu_table.REFERENCE}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, SPACING, seed=5)


def reassign_hu_reference(image, labels, values, table):
    """Plain restatement: per structure in table order, per-slice disk-2 dilation, overwrite."""
    out = np.asarray(image, np.float32).copy()
    footprint = disk(2).astype(bool)[None]  # in-plane only
    for (label_id, _, _), value in zip(table, np.asarray(values)):
        out[binary_dilation(labels == label_id, structure=footprint)] = value
    return out


@pytest.mark.parametrize("table_name", ["reference", "extended"])
def test_reassign_hu_matches_sequential_dilation(table_name):
    table = hu_table.get_table(table_name)
    rng = np.random.default_rng(0)
    ids = np.array([0, 52, 123, 128, 118, 120, 5, 15, 64, 7])
    labels = ids[rng.integers(0, len(ids), (3, 24, 20))]
    labels[1, 5:12, 4:9] = 128  # blocks so that dilations overlap
    labels[1, 9:15, 6:14] = 118
    image = rng.normal(300, 50, labels.shape).astype(np.float32)
    key = jax.random.key(4)
    ours = np.asarray(reassign_hu(image, labels.astype(np.int16), key, table))
    expected = reassign_hu_reference(image, labels, draw_hu_values(key, table), table)
    np.testing.assert_array_equal(ours, expected)
    untouched = ~binary_dilation(np.isin(labels, [e[0] for e in table]), structure=disk(2).astype(bool)[None])
    np.testing.assert_array_equal(ours[untouched], image[untouched])


def test_hu_draws_offsets_with_probability_half():
    keys = jax.random.split(jax.random.key(0), 2000)
    values = np.asarray(jax.vmap(lambda k: draw_hu_values(k, hu_table.REFERENCE))(keys))
    base = np.array([hu for _, _, hu in hu_table.REFERENCE])
    offset = values - base
    assert np.abs(offset).max() <= 200
    shifted = np.abs(offset) > 1e-4
    assert abs(shifted.mean() - 0.5) < 0.02
    assert abs(offset[shifted].mean()) < 10 and offset[shifted].std() == pytest.approx(400 / np.sqrt(12), rel=0.05)
    same = np.asarray(draw_hu_values(keys[0], hu_table.REFERENCE))
    np.testing.assert_array_equal(same, values[0])


def test_realistic_render_puts_every_structure_at_its_table_hu():
    """offsets=False: whatever the key, each structure's (dilated) voxels hold exactly its table HU."""
    table = hu_table.REFERENCE
    labels = np.zeros((len(table), 16, 16), np.int16)
    for z, (label_id, _, _) in enumerate(table):  # one structure per slice, far from the others
        labels[z, 6:10, 6:10] = label_id
    image = np.full(labels.shape, 300.0, np.float32)
    inside = np.zeros(labels.shape, bool)
    inside[:, 6:10, 6:10] = True
    for seed in range(8):
        out = np.asarray(reassign_hu(image, labels, jax.random.key(seed), table, offsets=False))
        for z, (_, name, hu) in enumerate(table):
            np.testing.assert_array_equal(out[z][inside[z]], np.float32(hu), err_msg=name)
        drawn = np.asarray(draw_hu_values(jax.random.key(seed), table, offsets=False))
        np.testing.assert_array_equal(drawn, np.array([hu for _, _, hu in table], np.float32))
    training = np.asarray(jax.vmap(lambda k: draw_hu_values(k, table))(jax.random.split(jax.random.key(0), 8)))
    assert np.any(training != np.array([hu for _, _, hu in table]))  # the training draws do move


def test_extended_table_covers_reference_and_great_vessels():
    ref_ids = [e[0] for e in hu_table.REFERENCE]
    ext_ids = [e[0] for e in hu_table.EXTENDED]
    assert ext_ids[-len(ref_ids) :] == ref_ids  # reference entries keep the last word
    assert {52, 54, 55, 56, 57, 58, 59, 60, 64} <= set(ext_ids)
    assert all(35 <= hu <= 40 for i, _, hu in hu_table.EXTENDED if i not in {118, 5, 6})
    with pytest.raises(ValueError, match="unknown HU table"):
        hu_table.get_table("bogus")


def test_phantom_labels_intensities_geometry(phantom):
    image, labels, affine = phantom
    assert image.shape == labels.shape == SHAPE and image.dtype == np.float32 and labels.dtype == np.int16
    assert set(np.unique(labels).tolist()) >= TABLE_IDS
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), SPACING[::-1])

    def median(label_id):
        return float(np.median(image[labels == label_id]))

    for lumen in (120, 119, 123):
        assert 250 <= median(lumen) <= 450, lumen
    assert 150 <= median(128) <= 450  # thin coronaries in fat: the image blur pulls their median down
    assert 80 <= median(118) <= 150
    assert median(11) < -700 and median(13) < -700
    assert median(116) > 300  # sternum (bone)
    assert np.median(image[(labels == 0) & (image > -500) & (image < 0)]) < -50  # fat
    components = cc3d.connected_components(labels == 128, connectivity=6)
    assert components.max() >= 3  # left tree, right tree, interrupted branches


def test_phantom_coronaries_run_in_fat_not_on_muscle():
    """A fat gap separates coronary walls from the myocardium (118), as in real hearts: on
    non-contrast CT that is what makes the vessel visible at all."""
    _, labels, _ = make_phantom((64, 160, 160), (1.5, 1.0, 1.0), seed=5)
    coronary = labels == 128
    shell = ndimage.binary_dilation(coronary) & ~coronary
    assert np.mean(labels[shell] == 118) < 0.05
    assert np.mean(labels[shell] == 0) > 0.3  # unlabelled tissue around the heart: epicardial fat


@pytest.mark.parametrize("seed", [0, 3])
def test_phantom_coronaries_never_run_through_other_organs(seed):
    """Where a course leaves the fat envelope (liver, lung, great veins: invisible on NCCT, as no real
    coronary is), its fat sleeve follows it: every in-plane neighbour of a coronary voxel is fat or a
    heart wall (the sleeve is at least one voxel of the coarsest axis thicker than the vessel)."""
    from syncas_jax.synth.phantom import HEART_WALLS

    _, labels, _ = make_phantom((48, 160, 160), (2.0, 1.0, 1.0), seed=seed)
    coronary = labels == 128
    shell = ndimage.binary_dilation(coronary, np.ones((1, 3, 3), bool)) & ~coronary
    around = set(np.unique(labels[shell]).tolist())
    assert around <= {0, *HEART_WALLS}, around - {0, *HEART_WALLS}


def centreline_length_mm(coronary: np.ndarray, spacing) -> float:
    """Skeleton length: the sum of the steps between 26-connected skeleton neighbours (each counted once)."""
    from skimage.morphology import skeletonize

    skeleton = skeletonize(coronary)
    points = np.argwhere(skeleton) * np.asarray(spacing)
    tree = KDTree(points)
    pairs = tree.query_pairs(r=float(np.linalg.norm(spacing)) + 1e-6, output_type="ndarray")
    return float(np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1).sum()) / 2


def test_phantom_anatomy_varies_between_seeds_and_keeps_every_label():
    """Held-out phantoms differ in more than noise: heart pose and size, fat, calibre, course, branching."""
    shape, spacing = (32, 128, 128), (2.0, 1.0, 1.0)
    anatomies = [draw_anatomy(seed) for seed in range(6)]
    for field in ("heart_offset", "heart_roll_deg", "heart_size", "fat_gap_mm", "calibre_scale", "course_seed"):
        assert len({getattr(a, field) for a in anatomies}) == 6, field
    assert len({a.branches for a in anatomies}) >= 2  # the branch count itself varies
    assert len({a.interrupted for a in anatomies}) >= 2
    lengths, radii = [], []
    for seed in (0, 1):
        _, labels, _ = make_phantom(shape, spacing, seed=seed)
        assert set(np.unique(labels).tolist()) >= TABLE_IDS, seed
        coronary = labels == 128
        lengths.append(centreline_length_mm(coronary, spacing))
        radii.append(float(np.percentile(edt.edt(coronary, anisotropy=spacing)[coronary], 90)))
    assert abs(lengths[0] - lengths[1]) > 0.05 * max(lengths), lengths
    a, b = anatomies[0], anatomies[1]
    assert a.branches != b.branches or a.interrupted != b.interrupted or a.length_fraction != b.length_fraction


def test_phantom_deterministic_any_shape():
    a = make_phantom((6, 40, 52), (2.0, 0.6, 0.6), seed=2)
    b = make_phantom((6, 40, 52), (2.0, 0.6, 0.6), seed=2)
    c = make_phantom((6, 40, 52), (2.0, 0.6, 0.6), seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (6, 40, 52) and np.any(a[1] == 128)


def test_plaques_on_the_coronary_tree(phantom):
    image, labels, _ = phantom
    mask = labels == 128
    centreline = coronary_centreline(mask, SPACING)
    assert len(centreline.points) > 10 and np.all(mask[tuple(centreline.points.T)])
    np.testing.assert_allclose(np.linalg.norm(centreline.tangent, axis=1), 1.0, atol=1e-6)
    kinds, counts = [], []
    for seed in range(40):
        out, records = insert_plaques(image, mask, centreline, SPACING, jax.random.key(seed))
        counts.append(len(records))
        for r in records:
            kinds.append(r["kind"])
            low, high = (300, 1000) if r["kind"] == "calcified" else (50, 150)
            assert low <= r["hu"] <= high and r["voxels"] >= 0
            centre = np.array(r["center_zyx"])
            near = np.argwhere(mask) - centre
            assert np.min(np.linalg.norm(near * SPACING, axis=1)) <= r["radius_mm"] + 2 * max(SPACING)
        if not records:
            np.testing.assert_array_equal(out, image)
    assert min(counts) >= 0 and max(counts) <= MAX_PLAQUES and len(set(counts)) > 5
    assert 0.5 < np.mean(np.array(kinds) == "calcified") < 0.8


def test_calcified_plaque_visible_in_image(phantom):
    image, labels, _ = phantom
    mask = labels == 128
    centreline = coronary_centreline(mask, SPACING)
    flat = np.zeros_like(image)
    for seed in range(20):
        out, records = insert_plaques(flat, mask, centreline, SPACING, jax.random.key(seed))
        big = [r for r in records if r["kind"] == "calcified" and r["voxels"] >= 2]
        if big:
            r = big[0]
            z, y, x = r["center_zyx"]
            assert out[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2].max() > 0.5 * r["hu"]
            return
    pytest.fail("no calcified plaque of 2+ voxels in 20 draws")


def test_case_seed_stable_and_distinct():
    assert case_seed(0, "case_001") == case_seed(0, "case_001")
    assert case_seed(0, "case_001") == 17870290965857093711
    assert len({case_seed(0, f"case_{i}") for i in range(100)} | {case_seed(1, "case_0")}) == 101


def test_render_case_deterministic_views_differ(phantom):
    image, labels, _ = phantom
    seed = case_seed(0, "phantom")
    views = render_case(image, labels, seed, "reference", views=2, spacing=SPACING, chunk=16)
    again = render_view(image, labels, seed, 1, "reference", spacing=SPACING, chunk=16)
    other = render_view(image, labels, seed + 1, 1, "reference", spacing=SPACING, chunk=16)
    assert len(views) == 2 and views[0].image.shape == SHAPE and views[0].image.dtype == np.float32
    np.testing.assert_array_equal(views[1].image, again.image)
    assert views[1].plaques == again.plaques
    assert np.abs(views[0].image - views[1].image).mean() > 1.0
    assert np.abs(other.image - views[1].image).mean() > 1.0
    # Contrast is gone from the left ventricle (CTA ≈ 380 HU → 40 ± 200), bone stays bright.
    lv = labels == 120
    assert np.median(views[0].image[lv]) < 260 and np.median(image[lv]) > 300


def test_extended_table_gives_descending_aorta_blood_hu(phantom):
    image, labels, _ = phantom
    reference_ids = [entry[0] for entry in hu_table.REFERENCE]
    near_reference = binary_dilation(np.isin(labels, reference_ids), structure=disk(2).astype(bool)[None])
    aorta = (labels == 52) & ~near_reference  # where no reference structure's in-plane dilation reaches
    assert aorta.sum() > 100
    key = jax.random.key(8)
    ref = np.asarray(reassign_hu(image, labels, key, hu_table.REFERENCE))
    ext = np.asarray(reassign_hu(image, labels, key, hu_table.EXTENDED))
    np.testing.assert_array_equal(ref[aorta], image[aorta])  # the reference leaves it bright
    blood = float(draw_hu_values(key, hu_table.EXTENDED)[0])  # table entry 0 is id 52
    assert np.mean(ext[aorta] == blood) > 0.9 and -165 <= blood <= 235


def paint_plaques_reference(image, mask, plaques, spacing):
    """Plain numpy restatement of the painting (the engine's former host implementation): per valid
    plaque, a box clipped to the volume; wall shell outside the lumen sparing earlier plaques; blend."""
    out = np.array(image, np.float64)
    spacing_arr = np.asarray(spacing, np.float64)
    pixel = min(spacing[1:])
    wall = max(0.5, pixel)
    occupied = np.zeros(out.shape, bool)
    voxels = []
    p = jax.tree.map(np.asarray, plaques)
    for i in np.flatnonzero(p.valid):
        lumen, radius, half, tangent = p.lumen_mm[i], p.radius_mm[i], p.half_length_mm[i], p.tangent[i]
        axis_mm, centre_mm = p.axis_mm[i].astype(np.float64), p.centre_mm[i].astype(np.float64)
        reach = np.ceil((max(half, radius) + lumen + wall + pixel) / spacing_arr).astype(int)
        centre_vox = np.rint(centre_mm / spacing_arr).astype(int)
        low, high = np.maximum(centre_vox - reach, 0), np.minimum(centre_vox + reach + 1, out.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        grids = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(low, high, spacing_arr)], indexing="ij")
        coords = np.stack(grids, axis=-1)
        rel = coords - axis_mm
        along = rel @ tangent
        off_axis = np.linalg.norm(rel - along[..., None] * tangent, axis=-1)
        shell = (off_axis <= lumen + wall) & (np.abs(along) <= half + radius) & ~mask[box] & ~occupied[box]
        out[box][shell] = 40.0
        rel = coords - centre_mm
        along = rel @ tangent
        q = np.sqrt((along / half) ** 2 + (np.linalg.norm(rel - along[..., None] * tangent, axis=-1) / radius) ** 2)
        weight = np.clip((1.0 - q) * radius / pixel + 0.5, 0.0, 1.0)
        out[box] = (1.0 - weight) * out[box] + weight * p.hu[i]
        occupied[box] |= weight > 0
        voxels.append(int((q <= 1.0).sum()))
    return out, voxels


def test_jax_plaque_painting_matches_numpy_restatement(phantom):
    from syncas_jax.synth.plaques import centreline_table, draw_plaques, paint_plaques, plaque_box

    image, labels, _ = phantom
    mask = labels == 128
    centreline = coronary_centreline(mask, SPACING)
    table = centreline_table(centreline, SPACING)
    box = plaque_box(float(centreline.radius_mm.max()), SPACING)
    painted = 0
    for seed in range(6):
        plaques = draw_plaques(jax.random.key(seed), table, len(table), min(SPACING[1:]))
        ours, voxels = paint_plaques(image, mask, plaques, SPACING, box)
        expected, expected_voxels = paint_plaques_reference(image, mask, plaques, SPACING)
        # float32 vs float64: a voxel sitting exactly on a threshold (wall shell, q = 1) may flip.
        assert np.mean(np.abs(np.asarray(ours) - expected) > 0.01) < 1e-4
        valid = np.asarray(plaques.valid)
        assert np.abs(np.asarray(voxels)[valid] - np.array(expected_voxels)).max(initial=0) <= 2
        assert not np.any(np.asarray(voxels)[~valid])
        painted += int(valid.sum())
    assert painted > 10


@pytest.mark.parametrize("load_name", ["none", "mild", "moderate", "severe"])
def test_calcium_loads_set_the_number_and_kind_of_plaques(phantom, load_name):
    image, labels, _ = phantom
    mask = labels == 128
    centreline = coronary_centreline(mask, SPACING)
    load = CALCIUM_LOADS[load_name]
    for seed in range(6):
        _, records = insert_plaques(image, mask, centreline, SPACING, jax.random.key(seed), load)
        assert load.min_count <= len(records) <= load.max_count
        assert all(r["kind"] == "calcified" for r in records)


def test_lesion_map_marks_each_calcified_ellipsoid_with_its_artery():
    case = make_phantom_case(SHAPE, SPACING, seed=5)
    mask = case.labels == 128
    centreline = coronary_centreline(mask, SPACING)
    _, records = insert_plaques(case.image, mask, centreline, SPACING, jax.random.key(3), CALCIUM_LOADS["severe"])
    lesions = calcium_lesion_map(records, SHAPE, SPACING, case.arteries)
    assert set(np.unique(lesions)) <= {0, 1, 2, 3, 4}
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), -1) * np.asarray(SPACING)
    union = np.zeros(SHAPE, bool)
    for r in records:  # the ellipsoid of the record, restated over the whole grid
        rel = grid - np.asarray(r["center_mm"])
        along = rel @ np.asarray(r["tangent"])
        across = np.linalg.norm(rel - along[..., None] * np.asarray(r["tangent"]), axis=-1)
        inside = (along / r["half_length_mm"]) ** 2 + (across / r["radius_mm"]) ** 2 <= 1.0
        assert inside.sum() == r["voxels"]  # the painter counted the same voxels
        union |= inside
    np.testing.assert_array_equal(lesions > 0, union)
    last = records[-1]  # painted last: nothing overwrites it
    artery = case.arteries[tuple(last["centreline_zyx"])]
    centre = tuple(np.rint(np.asarray(last["center_mm"]) / SPACING).astype(int))
    assert artery > 0 and (lesions[centre] == artery or not union[centre])
    assert (calcium_lesion_map(records, SHAPE, SPACING, None)[union] == OTHER_ID).all()


def test_realistic_renders_put_the_plaques_through_the_acquisition(phantom):
    """Painted after the acquisition a plaque keeps its drawn HU at its core; acquired with the scan, it is blurred
    and noisy like every other structure."""
    image, labels, _ = phantom
    seed, severe = case_seed(0, "phantom"), CALCIUM_LOADS["severe"]
    kwargs = dict(spacing=SPACING, chunk=16, realistic=True, load=severe)
    before = render_view(image, labels, seed, 0, "reference", **kwargs)
    after = render_view(image, labels, seed, 0, "reference", plaques_first=False, **kwargs)
    assert before.plaques == after.plaques and len(before.plaques) >= severe.min_count
    cores = [(tuple(r["center_zyx"]), np.float32(r["hu"])) for r in after.plaques]
    assert any(after.image[core] == hu for core, hu in cores)
    assert not any(before.image[core] == hu for core, hu in cores)
