"""U-Net layout, converter equivalence with the PyTorch reference, and bad-input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from syncas_jax.common.checkpoint import load_checkpoint
from syncas_jax.common.errors import InputError
from syncas_jax.nets.__main__ import main as convert_main
from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.reference import load_reference_model, reference_layout, tap_indices
from syncas_jax.nets.unet import SynCASNet, UNet3D, abstract_variables, count_parameters, init_variables
from tests import torch_reference as ref


def test_parameter_count_matches_reference():
    variables = abstract_variables()
    assert count_parameters(variables["params"]["unet"]) == ref.REFERENCE_PARAM_COUNT == 5_893_296
    torch_heads = sum(p.numel() for p in ref.make_heads().parameters())
    heads = {k: v for k, v in variables["params"].items() if k.startswith("head")}
    assert count_parameters(heads) == torch_heads
    biased = abstract_variables(ModelConfig(head_bias=True))["params"]["unet"]
    assert count_parameters(biased) == 5_893_296 + 2 and biased["head"]["bias"].shape == (2,)


def test_reference_layout_indices():
    assert tap_indices() == ref.TAP_INDICES
    layout = dict(reference_layout())
    net = ref.ReferenceUNet()
    for index, name in layout.items():
        assert isinstance(net.model[index], torch.nn.Conv3d), (index, name)
    assert layout[65] == "head" and len(net.model) == 66


def test_forward_shapes_and_instance_norm():
    x = jnp.zeros((2, 32, 32, 48, 1))
    variables = init_variables(jax.random.key(0), ModelConfig(ngf=4, depth=4, norm="instance"))
    assert "batch_stats" not in variables
    logits, taps = SynCASNet(ngf=4, depth=4, norm="instance").apply(variables, x)
    assert logits.shape == (2, 32, 32, 48, 2)
    assert [t.shape for t in taps] == [(2, 4, 4, 6, 32), (2, 8, 8, 12, 16), (2, 16, 16, 24, 8), (2, 32, 32, 48, 4)]


@pytest.mark.parametrize(
    "shape, message",
    [((32, 32, 32, 1), "5D"), ((1, 32, 32, 32, 3), "input channel"), ((1, 32, 32, 40, 1), "divisible by 16")],
)
def test_wrong_input_is_a_clear_error(shape, message):
    variables = abstract_variables(ModelConfig(ngf=4))
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda v: UNet3D(ngf=4).apply({k: v[k]["unet"] for k in v}, jnp.zeros(shape)), variables)


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = ref.ReferenceUNet()
    ref.randomize_batchnorm_stats(net, generator)
    heads = ref.make_heads()
    path = tmp_path_factory.mktemp("ref") / "checkpoint_best.pth"
    ref.save_reference_checkpoint(path, net, heads)
    return path, net.eval(), heads.eval()


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / (np.max(np.abs(theirs)) + 1e-12))


def test_converted_checkpoint_matches_pytorch(reference_checkpoint, tmp_path):
    path, net, heads = reference_checkpoint
    out = tmp_path / "converted"
    assert convert_main([str(path), str(out)]) == 0
    variables, meta = load_checkpoint(out)
    assert meta["model"] == {"ngf": 16, "depth": 4, "norm": "batch", "head_bias": False}

    x = np.random.default_rng(1).normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    with torch.no_grad():
        logits_t, taps_t = net(torch.from_numpy(x))
        projected_t = [head(tap) for head, tap in zip(heads, taps_t)]
    x_ours = jnp.asarray(np.moveaxis(x, 1, -1))
    model = SynCASNet()
    logits, projected = model.apply(variables, x_ours, method=SynCASNet.forward_projected)
    _, taps = model.apply(variables, x_ours)

    def channels_first(a):
        return np.moveaxis(np.asarray(a), -1, 1)

    assert relative_error(channels_first(logits), logits_t.numpy()) <= 1e-4
    for ours, theirs in zip(taps, taps_t):
        assert relative_error(channels_first(ours), theirs.numpy()) <= 1e-4
    for ours, theirs in zip(projected, projected_t):
        assert relative_error(channels_first(ours), theirs.numpy()) <= 1e-4


def test_not_a_reference_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(InputError, match="no 'network_weights'"):
        load_reference_model(path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_reference_model(garbage)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"network_weights": {}, "payload": Evil()}, path)
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_reference_model(path)


def test_mismatched_shapes_are_named(reference_checkpoint, tmp_path):
    path, _, _ = reference_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["network_weights"]["model.13.weight"] = torch.zeros(32, 16, 3, 3, 3)  # enc2_conv2 expects 32 in
    bad = tmp_path / "bad.pth"
    torch.save(checkpoint, bad)
    with pytest.raises(InputError, match=r"shape mismatch at .*enc2_conv2"):
        load_reference_model(bad)
    assert convert_main([str(bad), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_missing_key_is_named(reference_checkpoint, tmp_path):
    path, _, _ = reference_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["network_weights"]["model.25.running_var"]
    bad = tmp_path / "missing.pth"
    torch.save(checkpoint, bad)
    with pytest.raises(InputError, match=r"lacks 'model.25.running_var'"):
        load_reference_model(bad)
