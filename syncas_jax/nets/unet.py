"""The SynCAS 3D U-Net and its contrastive projection heads (design §3), channels-last.

Shapes: input (N, Z, Y, X, 1); logits (N, Z, Y, X, 2). With the defaults (ngf 16,
depth 4) the four contrastive taps are
  enc4  (N, Z/8, Y/8, X/8, 128)  first ReLU of encoder level 4
  dec2  (N, Z/4, Y/4, X/4, 64)   first ReLU of decoder stage 2
  dec3  (N, Z/2, Y/2, X/2, 32)   first ReLU of decoder stage 3
  dec4  (N, Z,   Y,   X,   16)   last ReLU of decoder stage 4
Spatial sizes must be divisible by 2**depth.

Module names follow the reference's flat `nn.Sequential` block by block, so the
checkpoint converter (`nets/reference.py`) can map `model.{i}` onto them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from syncas_jax.nets.config import CONV_IMPLS, ModelConfig

PROJECTION_DIM = 128

# nnU-Net's InitWeights_He(1e-2): kaiming normal, fan in, leaky-ReLU slope 0.01.
he_normal = nn.initializers.variance_scaling(2.0 / (1 + 1e-2**2), "fan_in", "normal")


def uniform_init(bound: float) -> Callable:
    """uniform(−bound, bound): with bound 1/sqrt(fan_in) PyTorch nn.Linear's default for weight and bias."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def reflect_pad(x: jnp.ndarray, width: int = 1) -> jnp.ndarray:
    """Reflect-pad the three spatial axes of (N, Z, Y, X, C) by `width` (PyTorch padding_mode='reflect')."""
    return jnp.pad(x, ((0, 0), (width, width), (width, width), (width, width), (0, 0)), mode="reflect")


def upsample_nearest(x: jnp.ndarray) -> jnp.ndarray:
    """Nearest-neighbour upsampling ×2 of the spatial axes of (N, Z, Y, X, C)."""
    for axis in (1, 2, 3):
        x = jnp.repeat(x, 2, axis=axis)
    return x


# How the 3×3×3 convolutions are computed; parameters and results are the same (to float rounding).
# CONV_IMPLS (nets/config.py):
#   "auto"    the default: "conv2d" when JAX's default backend is the CPU, else "xla".
#   "xla"     one 3-D `lax.conv_general_dilated` (flax.linen.Conv as is); what GPUs/TPUs run.
#   "conv2d"  for CPU: a sum over the 3 depth taps of 2-D convs (batch N·Z), see
#             `conv3x3x3_as_conv2d`. On jaxlib 0.10 XLA:CPU runs 3-D convs with a slow generic
#             Eigen kernel; this takes a U-Net train step from ~3.8× PyTorch's CPU time to ~1.1×
#             and the forward pass from ~3.5× to ~0.8× (benchmarks/bench_unet.py, 2×1×32×128×128).
_YNN_DECLINING_PAD = 3


def conv3x3x3_as_conv2d(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> jnp.ndarray:
    """Drop-in for `lax.conv_general_dilated` as flax.linen.Conv calls it (channels-last).

    A stride-1 VALID 3×3×3 conv of (N, Z+2, Y+2, X+2, Cin) with a (3, 3, 3, Cin, Cout) kernel
    becomes Σ_kd conv2d(x[:, kd:kd+Z] as (N·Z, Y+2, X+2, Cin), kernel[kd]). Each 2-D conv gets 3
    rows of zero padding on top whose outputs are dropped: jaxlib 0.10's XLA:CPU hands plain 2-D
    convs to YNNPACK, which is slower here than Eigen's spatial convolution, and declines convs
    padded by >= the kernel size. Anything else falls through to `lax.conv_general_dilated`.
    """
    plain = (
        lhs.ndim == 5
        and tuple(rhs.shape[:3]) == (3, 3, 3)
        and tuple(window_strides) == (1, 1, 1)
        and isinstance(padding, str)
        and padding == "VALID"
        and all(d == 1 for d in (lhs_dilation or (1,)))
        and all(d == 1 for d in (rhs_dilation or (1,)))
        and feature_group_count == 1
        and not kwargs
    )
    if not plain:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )
    n, zp, yp, xp, cin = lhs.shape
    z = zp - 2
    out = None
    for kd in range(3):
        y = jax.lax.conv_general_dilated(
            lhs[:, kd : kd + z].reshape(n * z, yp, xp, cin),
            rhs[kd],
            (1, 1),
            ((_YNN_DECLINING_PAD, 0), (0, 0)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )[:, _YNN_DECLINING_PAD:]
        out = y if out is None else out + y
    return out.reshape(n, z, yp - 2, xp - 2, rhs.shape[-1])


def conv_function(conv_impl: str):
    """The `conv_general_dilated` argument for flax.linen.Conv (None = lax's own)."""
    return None if resolve_conv_impl(conv_impl) == "xla" else conv3x3x3_as_conv2d


def resolve_conv_impl(conv_impl: str) -> str:
    """ "xla" or "conv2d": "auto" picks "conv2d" on the CPU backend, "xla" on GPU/TPU."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        return "conv2d" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


class ConvBlock(nn.Module):
    """3×3×3 conv (reflect padding, bias only with instance norm) → norm → ReLU."""

    features: int
    norm: str = "batch"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = nn.Conv(
            self.features,
            (3, 3, 3),
            padding="VALID",
            use_bias=self.norm == "instance",
            kernel_init=he_normal,
            dtype=self.dtype,
            conv_general_dilated=conv_function(self.conv_impl),
            name="conv",
        )(reflect_pad(x))
        if self.norm == "batch":
            # PyTorch momentum 0.1 is Flax momentum 0.9 (weight of the old running value).
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="norm")(
                x
            )
        else:
            x = nn.InstanceNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
        return nn.relu(x)


class UNet3D(nn.Module):
    """Reference 3D U-Net. Returns (logits, taps) with taps = [enc_deep, dec_(depth-2), dec_(depth-1), dec_depth]."""

    ngf: int = 16
    depth: int = 4
    norm: str = "batch"
    in_channels: int = 1
    num_classes: int = 2
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see CONV_IMPLS
    # The reference head has no bias. On ReLU features (>= 0) a bias-free head can only reach
    # p(coronary) > 0.5 where some feature favours the coronary; early class-imbalanced
    # training can turn every head weight towards background, after which the coronary is
    # coded as "all features exactly 0" (p = 0.5, dead ReLUs, no gradient) and argmax never
    # predicts it. A bias absorbs the class prior and avoids that trap (2 more parameters).
    head_bias: bool = False

    def setup(self) -> None:
        ModelConfig(self.ngf, self.depth, self.norm, self.head_bias, self.conv_impl)  # validates

    def check_input(self, x: jnp.ndarray) -> None:
        multiple = 2**self.depth
        if x.ndim != 5:
            raise ValueError(
                f"UNet3D expects input of shape (batch, z, y, x, {self.in_channels}) (5D, channels-last), "
                f"got {x.ndim}D shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"UNet3D expects {self.in_channels} input channel(s) last, got shape {tuple(x.shape)}")
        if any(size % multiple for size in x.shape[1:4]):
            raise ValueError(f"UNet3D spatial sizes must be divisible by {multiple}, got {tuple(x.shape[1:4])}")
        if any(size < 2 for size in x.shape[1:4]):
            raise ValueError(f"spatial sizes too small for reflect padding: {tuple(x.shape[1:4])}")

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
        self.check_input(x)

        def block(features: int, name: str) -> ConvBlock:
            return ConvBlock(features, norm=self.norm, dtype=self.dtype, conv_impl=self.conv_impl, name=name)

        x = x.astype(self.dtype)
        x = block(self.ngf, "stem")(x, train)
        skips = []
        taps = []
        for level in range(1, self.depth + 1):
            features = self.ngf * 2 ** (level - 1)
            x = block(features, f"enc{level}_conv1")(x, train)
            if level == self.depth:
                taps.append(x)
            x = block(features, f"enc{level}_conv2")(x, train)
            skips.append(x)
            x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
        bottleneck = self.ngf * 2**self.depth
        x = block(bottleneck, "bottleneck_conv1")(x, train)
        x = block(bottleneck, "bottleneck_conv2")(x, train)
        for stage in range(1, self.depth + 1):
            features = self.ngf * 2 ** (self.depth - stage)
            x = jnp.concatenate([skips[-stage], upsample_nearest(x)], axis=-1)
            x = block(features, f"dec{stage}_conv1")(x, train)
            if stage in (self.depth - 2, self.depth - 1):
                taps.append(x)
            x = block(features, f"dec{stage}_conv2")(x, train)
        taps.append(x)
        head = nn.Conv(
            self.num_classes,
            (3, 3, 3),
            padding="VALID",
            use_bias=self.head_bias,
            kernel_init=he_normal,
            dtype=self.dtype,
            conv_general_dilated=conv_function(self.conv_impl),
            name="head",
        )
        logits = head(reflect_pad(x))
        return logits, taps


def tap_channels(ngf: int = 16, depth: int = 4) -> tuple[int, int, int, int]:
    """Channel counts of the four taps: (128, 64, 32, 16) for the defaults."""
    return (ngf * 2 ** (depth - 1), ngf * 4, ngf * 2, ngf)


class ProjectionHead(nn.Module):
    """Per-voxel Linear(C→128) → ReLU → Linear(128→128), L2-normalised over channels. (..., C) → (..., 128)."""

    dim: int = PROJECTION_DIM
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for name, fan_in in (("fc1", x.shape[-1]), ("fc2", self.dim)):
            if name == "fc2":
                x = nn.relu(x)
            init = uniform_init(1 / np.sqrt(fan_in))
            x = nn.Dense(self.dim, kernel_init=init, bias_init=init, dtype=self.dtype, name=name)(x)
        x = x.astype(jnp.float32)
        # = x / max(|x|, 1e-12) as F.normalize, with a gradient that stays finite at x = 0.
        squared = jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24)
        return x * jax.lax.rsqrt(squared)


class SynCASNet(nn.Module):
    """U-Net plus four projection heads in one parameter tree: {'unet': ..., 'head0'..'head3': ...}."""

    ngf: int = 16
    depth: int = 4
    norm: str = "batch"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see CONV_IMPLS; parameters do not depend on it
    head_bias: bool = False  # see UNet3D.head_bias

    def setup(self) -> None:
        self.unet = UNet3D(
            ngf=self.ngf,
            depth=self.depth,
            norm=self.norm,
            dtype=self.dtype,
            conv_impl=self.conv_impl,
            head_bias=self.head_bias,
        )
        self.heads = [ProjectionHead(dtype=self.dtype, name=f"head{k}") for k in range(4)]

    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
        """Logits and the four raw (unprojected) tap features."""
        return self.unet(x, train)

    def project(self, features: jnp.ndarray, tap: int) -> jnp.ndarray:
        """Apply projection head `tap` (0..3) to features (..., C_tap) → (..., 128), unit norm."""
        return self.heads[tap](features)

    def forward_projected(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
        """Logits and the four projected tap features (..., 128). Also used to initialise all parameters."""
        logits, taps = self.unet(x, train)
        return logits, [head(tap) for head, tap in zip(self.heads, taps)]


def build_model(model: ModelConfig, dtype: Any = jnp.float32) -> SynCASNet:
    """U-Net + projection heads as `model` describes, computing in `dtype`."""
    return SynCASNet(**model.module_kwargs(), dtype=jnp.dtype(dtype))


def build_unet(model: ModelConfig, dtype: Any = jnp.float32) -> UNet3D:
    """The U-Net alone (inference)."""
    return UNet3D(**model.module_kwargs(), dtype=jnp.dtype(dtype))


def init_variables(key: jax.Array, model: ModelConfig = ModelConfig(), dtype: Any = jnp.float32):
    """Initialise SynCASNet variables ({'params', 'batch_stats'}) on a minimal input."""
    size = model.size_multiple
    return build_model(model, dtype).init(key, jnp.zeros((1, size, size, size, 1)), method=SynCASNet.forward_projected)


def abstract_variables(model: ModelConfig = ModelConfig()):
    """Shapes and dtypes of SynCASNet variables, without computing anything."""
    return jax.eval_shape(lambda key: init_variables(key, model), jax.random.key(0))


def count_parameters(tree: Any) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree)))
