"""conv_impl="conv2d" (the CPU default through "auto") computes the same network as XLA's 3-D convolutions."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from syncas_jax.nets.config import ModelConfig
from syncas_jax.nets.unet import (
    CONV_IMPLS,
    SynCASNet,
    UNet3D,
    conv3x3x3_as_conv2d,
    conv3x3x3_valid,
    conv_function,
    init_variables,
    max_pool_2x,
    resolve_conv_impl,
)

IMPLS = ("xla", "conv2d")  # the two formulations ("auto" is one of them)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def test_conv2d_matches_lax_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 9, 7, 5)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 5, 4)).astype(np.float32))
    dn = ("NDHWC", "DHWIO", "NDHWC")
    expected = jax.lax.conv_general_dilated(x, k, (1, 1, 1), "VALID", dimension_numbers=dn)
    got = conv3x3x3_as_conv2d(x, k, (1, 1, 1), "VALID", dimension_numbers=dn)
    assert got.shape == expected.shape == (2, 4, 7, 5, 4)
    assert rel(got, expected) <= 1e-5
    # Anything but the plain stride-1 VALID 3×3×3 case falls through to lax unchanged.
    strided = conv3x3x3_as_conv2d(x, k, (2, 2, 2), "VALID", dimension_numbers=dn)
    np.testing.assert_array_equal(strided, jax.lax.conv_general_dilated(x, k, (2, 2, 2), "VALID", dimension_numbers=dn))


def unet_variables(norm: str, depth: int = 4, seed: int = 0):
    """ngf-4 U-Net variables with non-trivial batch-norm statistics (as a trained net has)."""
    init = functools.partial(init_variables, model=ModelConfig(ngf=4, depth=depth, norm=norm))
    variables = jax.jit(init)(jax.random.key(seed))
    variables = {k: v["unet"] for k, v in variables.items()}
    if norm == "batch":
        rng = np.random.default_rng(seed)
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, a: jnp.asarray(
                rng.normal(0, 0.5, a.shape) if "mean" in jax.tree_util.keystr(path) else rng.uniform(0.5, 2, a.shape),
                jnp.float32,
            ),
            variables["batch_stats"],
        )
    return variables


def test_parameters_do_not_depend_on_conv_impl():
    shapes = {
        impl: jax.eval_shape(
            lambda key, impl=impl: SynCASNet(ngf=4, conv_impl=impl).init(
                key, jnp.zeros((1, 16, 16, 16, 1)), method=SynCASNet.forward_projected
            ),
            jax.random.key(0),
        )
        for impl in CONV_IMPLS
    }
    assert jax.tree.structure(shapes["conv2d"]) == jax.tree.structure(shapes["xla"])
    assert jax.tree.leaves(shapes["conv2d"]) == jax.tree.leaves(shapes["xla"])


def test_unet_conv2d_matches_default_eval():
    """Inference (eval-mode batch norm): logits and taps within 1e-5 of the default; parameter
    gradients within 1e-4 of it and no further than it from a float64 evaluation."""
    variables = unet_variables("batch", depth=3)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 24, 1)).astype(np.float32))
    outputs = {impl: jax.jit(UNet3D(ngf=4, depth=3, conv_impl=impl).apply)(variables, x) for impl in IMPLS}
    (la, ta), (lb, tb) = outputs["xla"], outputs["conv2d"]
    assert rel(lb, la) <= 1e-5
    for a, b in zip(ta, tb):
        assert rel(b, a) <= 1e-5

    # Kernel gradients sum over every voxel; both impls are compared with a float64 evaluation.
    def grads(impl, dtype):
        vs = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)

        def loss(params):
            logits, taps = UNet3D(ngf=4, depth=3, conv_impl=impl, dtype=dtype).apply(
                {**vs, "params": params}, x.astype(dtype)
            )
            return jnp.mean(jax.nn.log_softmax(logits)[..., 1]) + sum(jnp.mean(t) for t in taps)

        return jax.grad(loss)(vs["params"])

    with jax.enable_x64(True):
        truth = jax.tree.map(np.asarray, jax.jit(grads, static_argnums=(0, 1))("xla", jnp.float64))
    default, conv2d = (jax.jit(grads, static_argnums=(0, 1))(impl, jnp.float32) for impl in IMPLS)
    for (path, t), a, b in zip(
        jax.tree_util.tree_flatten_with_path(truth)[0], jax.tree.leaves(default), jax.tree.leaves(conv2d)
    ):
        assert rel(b, a) <= 1e-4, jax.tree_util.keystr(path)
        assert rel(b, t) <= max(1e-5, 1.5 * rel(a, t)), (jax.tree_util.keystr(path), rel(b, t), rel(a, t))


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_conv2d_train_mode_as_accurate_as_default(norm):
    """Train-mode batch norm / instance norm over 4 channels amplify float32 rounding, so here the
    default itself is ~2e-5 from a float64 evaluation; conv2d must be no further from it."""
    variables = unet_variables(norm, depth=3)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 24, 1))
    mutable = ["batch_stats"] if norm == "batch" else []

    def logits(impl, dtype):
        model = UNet3D(ngf=4, depth=3, norm=norm, conv_impl=impl, dtype=dtype)
        vs = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
        (out, _), _ = model.apply(vs, jnp.asarray(x, dtype), train=True, mutable=mutable)
        return np.asarray(out, np.float64)

    with jax.enable_x64(True):
        truth = logits("xla", jnp.float64)
    errors = {impl: rel(logits(impl, jnp.float32), truth) for impl in IMPLS}
    assert errors["xla"] < 1e-4
    assert errors["conv2d"] <= max(1e-5, 1.5 * errors["xla"]), errors


def test_auto_picks_conv2d_on_cpu_only(monkeypatch):
    assert jax.default_backend() == "cpu"
    assert resolve_conv_impl("auto") == "conv2d"
    assert conv_function("auto") is conv3x3x3_as_conv2d
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_conv_impl("auto") == "xla"
    assert conv_function("auto") is None
    assert resolve_conv_impl("conv2d") == "conv2d"


def test_unknown_conv_impl_is_an_error():
    assert CONV_IMPLS == ("auto", "xla", "conv2d")
    variables = unet_variables("batch", depth=3)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        UNet3D(ngf=4, depth=3, conv_impl="cudnn").apply(variables, jnp.zeros((1, 16, 16, 16, 1)))


@pytest.mark.parametrize("cin, cout", [(1, 4), (3, 3), (6, 2)])
def test_conv3x3x3_valid_gradients_match_lax(cin, cout):
    """The custom VJP (input gradient from our transposed 2-D convs when Cin <= Cout, else XLA's)
    equals the gradient of XLA's own 3-D conv, for both branches."""
    rng = np.random.default_rng(cin * 10 + cout)
    x = jnp.asarray(rng.normal(size=(2, 5, 8, 7, cin)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(3, 3, 3, cin, cout)).astype(np.float32))
    dn = ("NDHWC", "DHWIO", "NDHWC")
    highest = jax.lax.Precision.HIGHEST
    expected, expected_vjp = jax.vjp(
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1, 1), "VALID", dimension_numbers=dn, precision=highest),
        x,
        k,
    )
    got, got_vjp = jax.vjp(lambda x, k: conv3x3x3_valid(x, k, highest), x, k)
    assert got.shape == expected.shape == (2, 3, 6, 5, cout)
    assert rel(got, expected) <= 1e-5
    dy = jnp.asarray(rng.normal(size=expected.shape).astype(np.float32))
    for ours, theirs in zip(got_vjp(dy), expected_vjp(dy)):
        assert ours.shape == theirs.shape
        assert rel(ours, theirs) <= 1e-5


def test_max_pool_2x_matches_flax_with_ties():
    """Values and gradient equal flax's max_pool, ties included: windows of equal values (the
    gradient goes to the first maximum in row-major window order, as XLA's select-and-scatter)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(2, 4, 6, 8, 3)).astype(np.float32)  # 3 values over 8 voxels: ties everywhere
    x[0, :2, :2, :2, 0] = 1.0  # one window all equal
    x = jnp.asarray(x)
    reference = functools.partial(nn.max_pool, window_shape=(2, 2, 2), strides=(2, 2, 2))
    expected, expected_vjp = jax.vjp(reference, x)
    got, got_vjp = jax.vjp(max_pool_2x, x)
    np.testing.assert_array_equal(got, expected)
    dy = jnp.asarray(rng.normal(size=expected.shape).astype(np.float32))
    np.testing.assert_array_equal(got_vjp(dy)[0], expected_vjp(dy)[0])
    assert float(got_vjp(dy)[0][0, 0, 0, 0, 0]) == float(dy[0, 0, 0, 0, 0])  # the first voxel takes the tie
