"""`--keep-orientation`: caches, inference input and checkpoints in the files' own axis order (the reference's).

Known answer: kept, a scan reaches the network as the array the file stores (what SimpleITK's
GetArrayFromImage gives and the reference trained on), while the default turns every layout into the
same LPS array. A RAS-stored scan tells the two apart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from syncas_jax.common.errors import InputError
from syncas_jax.common.nifti import read_volume, volume_from_array, write_volume
from syncas_jax.data.__main__ import main as preprocess_main
from syncas_jax.data.cache import preprocess_case, read_dataset_info
from syncas_jax.data.layout import cache_paths
from syncas_jax.data.orientation import checkpoint_orientation
from syncas_jax.data.transforms import preprocess_hu
from syncas_jax.data.volume import predict_volume, preprocess_image
from syncas_jax.synth.phantom import make_phantom
from syncas_jax.train.config import config_from_dict
from syncas_jax.train.loop import select_cases
from tests.layouts import LAYOUTS, relayout

SPACING = (2.0, 1.2, 1.2)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The phantom stored LPS and RAS: {layout: (view path, label path, stored view array, stored mask, spacing)}."""
    folder = tmp_path_factory.mktemp("layouts")
    image, labels, affine = make_phantom((12, 48, 48), (3.0, 0.8, 0.8), seed=2)
    out = {}
    for name in ("LPS", "RAS"):
        view, stored_affine, spacing = relayout(np.rint(image), affine, *LAYOUTS[name])
        mask, _, _ = relayout((labels == 128).astype(np.uint8), affine, *LAYOUTS[name])
        like = volume_from_array(view, spacing, stored_affine)
        write_volume(view, folder / name / f"{name}.view0.img.nii.gz", like)
        write_volume(mask, folder / name / f"{name}.label.nii.gz", like, np.uint8)
        out[name] = (folder / name, view, mask, spacing)
    return out


def test_a_kept_case_is_cached_as_the_file_stores_it(stored):
    for name, (folder, view, mask, spacing) in stored.items():
        views = [read_volume(folder / f"{name}.view0.img.nii.gz")]
        label = read_volume(folder / f"{name}.label.nii.gz")
        kept = preprocess_case(views, label, SPACING, orientation="file")
        expected, expected_mask, _ = preprocess_hu(view[None].astype(np.float32), spacing, SPACING, mask)
        np.testing.assert_array_equal(kept.views, expected)
        np.testing.assert_array_equal(kept.label > 0, expected_mask > 0)
        assert kept.properties["orientation"] == "file" and kept.properties["source_axcodes"] == list(name)
    lps = preprocess_case([read_volume(stored["LPS"][0] / "LPS.view0.img.nii.gz")],
                          read_volume(stored["LPS"][0] / "LPS.label.nii.gz"), SPACING)  # fmt: skip
    ras_kept = preprocess_case([read_volume(stored["RAS"][0] / "RAS.view0.img.nii.gz")],
                               read_volume(stored["RAS"][0] / "RAS.label.nii.gz"), SPACING, "file")  # fmt: skip
    np.testing.assert_array_equal(ras_kept.views, lps.views[..., ::-1, ::-1])  # RAS = LPS with y and x flipped


def test_inference_input_kept_and_restored(stored):
    folder, view, _, spacing = stored["RAS"]
    volume = read_volume(folder / "RAS.view0.img.nii.gz")
    kept, properties = preprocess_image(volume, SPACING, orientation="file")
    expected, _, _ = preprocess_hu(view[None].astype(np.float32), spacing, SPACING, None)
    np.testing.assert_array_equal(kept, expected[0])
    canonical, _ = preprocess_image(volume, SPACING)
    assert not np.array_equal(kept, canonical)

    def left_half(image):  # orientation-sensitive: "coronary" in the array's first half of columns
        probability = np.zeros_like(image)
        probability[..., : image.shape[-1] // 2] = 1.0
        return np.stack([1 - probability, probability])

    in_file = np.zeros(view.shape, np.uint8)  # the first half of the crop box's columns, in file order
    low, high = properties["crop_bbox"][2]
    in_file[..., low : low + (high - low) // 2] = 1
    # canonical: the network saw x flipped, so it marked the other half (the phantom's crop box is centred)
    for orientation, expected in (("file", in_file), ("canonical", in_file[..., ::-1])):
        mask = predict_volume(volume, left_half, spacing=SPACING, orientation=orientation).segmentation
        np.testing.assert_array_equal(mask, expected, orientation)


def test_cli_cache_and_training_must_agree(stored, tmp_path, capsys):
    folder = stored["RAS"][0]
    spacing = ["--spacing", *map(str, SPACING)]
    assert preprocess_main(["-i", str(folder), "-o", str(tmp_path / "kept"), "--keep-orientation", *spacing]) == 0
    assert read_dataset_info(tmp_path / "kept")["orientation"] == "file"
    np.testing.assert_array_equal(
        np.load(cache_paths(tmp_path / "kept", "RAS")["views"]),
        preprocess_case([read_volume(folder / "RAS.view0.img.nii.gz")], read_volume(folder / "RAS.label.nii.gz"),
                        SPACING, "file").views,
    )  # fmt: skip
    # the same folder again without the flag: refused, nothing mixed
    assert preprocess_main(["-i", str(folder), "-o", str(tmp_path / "kept"), *spacing]) == 2
    assert "cache made in 'file' orientation, not 'canonical'" in capsys.readouterr().err

    base = {"data_dir": str(tmp_path / "kept"), "spacing": list(SPACING), "val_fraction": 0.0}
    with pytest.raises(InputError, match="cache made in 'file' orientation, the config trains in 'canonical'"):
        select_cases(config_from_dict(base)[0])
    assert select_cases(config_from_dict({**base, "orientation": "file"})[0])[0] == ["RAS"]


def test_checkpoints_say_which_convention(tmp_path):
    assert checkpoint_orientation({}) == "canonical"  # checkpoints from before the record
    assert checkpoint_orientation({"config": {"orientation": "file"}}) == "file"
    assert checkpoint_orientation({"orientation": "file", "config": {"orientation": "canonical"}}) == "file"
    torch = pytest.importorskip("torch")
    from syncas_jax.nets.reference import load_reference_model
    from tests import torch_reference as ref

    torch.manual_seed(0)
    ref.save_reference_checkpoint(tmp_path / "ref.pth", ref.ReferenceUNet(), ref.make_heads())
    _, meta = load_reference_model(tmp_path / "ref.pth")
    assert checkpoint_orientation(json.loads(json.dumps(meta))) == "file"  # the reference's own convention
