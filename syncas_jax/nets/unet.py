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

import functools
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
#   "conv2d"  for CPU: the 3-D conv as 2-D convs over depth slices, with its own gradient, see
#             `conv3x3x3_as_conv2d`. On jaxlib 0.10 XLA:CPU runs 3-D convs with a slow generic
#             Eigen kernel; on 2 cores this takes a U-Net train step from ~3.8× PyTorch's CPU time
#             to 0.98× and the forward pass to 0.66× (benchmarks/bench_unet.py, 2×1×32×128×128;
#             the depth taps as 3·Cout output channels of one 2-D conv, the transposed conv for the
#             input gradient and the elementwise max-pool gradient took it from 1.36× / 0.91×).
# jaxlib 0.10's XLA:CPU hands plain 2-D convs to YNNPACK, which is slower here than Eigen's
# spatial convolution, and declines convs padded by >= the kernel size: each 2-D conv gets
# _EIGEN_PAD more rows of zero padding on top, whose output rows are dropped.
_EIGEN_PAD = 3
_NHWC = ("NHWC", "HWIO", "NHWC")


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
    is computed by `conv3x3x3_valid` (2-D convs over depth slices, forward and gradient).
    Anything else falls through to `lax.conv_general_dilated`.
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
    return conv3x3x3_valid(lhs, rhs, precision)


def _conv2d(x: jnp.ndarray, kernel: jnp.ndarray, pad: int, precision) -> jnp.ndarray:
    """2-D conv, NHWC × HWIO → NHWC, zero padding `pad` on every side (routed to Eigen, see _EIGEN_PAD)."""
    padding = ((pad + _EIGEN_PAD, pad), (pad, pad))
    out = jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC, precision=precision)
    return out[:, _EIGEN_PAD:]


def _shifted_depth_sum(taps: jnp.ndarray, depth: int) -> jnp.ndarray:
    """Σ_kd taps[:, kd : kd + depth, ..., kd, :] of (N, D, Y, X, 3, C): the three depth taps, aligned."""
    return sum(taps[:, kd : kd + depth, ..., kd, :] for kd in range(3))


def _conv3x3x3_forward(x: jnp.ndarray, kernel: jnp.ndarray, precision) -> jnp.ndarray:
    """VALID conv of x (N, Z+2, Y+2, X+2, Cin) with kernel (3, 3, 3, Cin, Cout) → (N, Z, Y, X, Cout).

    One 2-D conv over all N·(Z+2) depth slices, with the 3 depth taps as 3·Cout output
    channels (the input is read once, as it lies), then out[z] = Σ_kd t[z + kd, tap kd]."""
    n, zp, yp, xp, cin = x.shape
    cout = kernel.shape[-1]
    by_depth_tap = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, cin, 3 * cout)
    taps = _conv2d(x.reshape(n * zp, yp, xp, cin), by_depth_tap, 0, precision)
    return _shifted_depth_sum(taps.reshape(n, zp, yp - 2, xp - 2, 3, cout), zp - 2)


def _conv3x3x3_input_grad(dy: jnp.ndarray, kernel: jnp.ndarray, precision) -> jnp.ndarray:
    """Gradient of `_conv3x3x3_forward` w.r.t. x: dy (N, Z, Y, X, Cout) → (N, Z+2, Y+2, X+2, Cin).

    The transposed conv is a full-padded 2-D conv of each dy slice with the flipped kernel, the
    3 depth taps as 3·Cin output channels; tap kd lands on depth z + kd."""
    n, z, y, x, cout = dy.shape
    cin = kernel.shape[3]
    flipped = jnp.transpose(jnp.flip(kernel, (1, 2)), (1, 2, 4, 0, 3)).reshape(3, 3, cout, 3 * cin)
    taps = _conv2d(dy.reshape(n * z, y, x, cout), flipped, 2, precision).reshape(n, z, y + 2, x + 2, 3, cin)
    return sum(jnp.pad(taps[..., kd, :], ((0, 0), (kd, 2 - kd), (0, 0), (0, 0), (0, 0))) for kd in range(3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3x3_valid(x: jnp.ndarray, kernel: jnp.ndarray, precision=None) -> jnp.ndarray:
    """VALID 3×3×3 conv, channels-last: x (N, Z+2, Y+2, X+2, Cin), kernel (3, 3, 3, Cin, Cout) → (N, Z, Y, X, Cout).

    Computed with 2-D convs over depth slices (forward and both gradients), which XLA:CPU runs
    far faster than its 3-D conv; the same function as `lax.conv_general_dilated` up to
    float rounding."""
    return _conv3x3x3_forward(x, kernel, precision)


def _conv3x3x3_fwd(x, kernel, precision):
    return _conv3x3x3_forward(x, kernel, precision), (x, kernel)


def _conv3x3x3_bwd(precision, residuals, dy):
    """Kernel gradient: XLA's own (one weight-gradient conv over all depth slices, 3·Cout wide).
    Input gradient: XLA's own when Cin > Cout, else `_conv3x3x3_input_grad` — whichever
    transposed conv has the narrower 3-tap intermediate (3·Cout resp. 3·Cin channels)."""
    x, kernel = residuals
    dy = dy.astype(x.dtype)
    if x.shape[-1] <= kernel.shape[-1]:
        (dk,) = jax.vjp(lambda k: _conv3x3x3_forward(x, k, precision), kernel)[1](dy)
        return _conv3x3x3_input_grad(dy, kernel, precision), dk
    return jax.vjp(lambda x, k: _conv3x3x3_forward(x, k, precision), x, kernel)[1](dy)


conv3x3x3_valid.defvjp(_conv3x3x3_fwd, _conv3x3x3_bwd)


def _pool_windows(x: jnp.ndarray) -> jnp.ndarray:
    """(N, Z, Y, X, C) → (N, Z/2, Y/2, X/2, 8, C): each 2×2×2 window's voxels in row-major window order."""
    n, z, y, x_, c = x.shape
    w = x.reshape(n, z // 2, 2, y // 2, 2, x_ // 2, 2, c)
    return jnp.transpose(w, (0, 1, 3, 5, 2, 4, 6, 7)).reshape(n, z // 2, y // 2, x_ // 2, 8, c)


@jax.custom_vjp
def max_pool_2x(x: jnp.ndarray) -> jnp.ndarray:
    """2×2×2 max pooling, stride 2, of (N, Z, Y, X, C) (even sizes) → (N, Z/2, Y/2, X/2, C).

    = flax.linen.max_pool(x, (2, 2, 2), strides=(2, 2, 2)), with the same gradient (all of it
    to the first maximum of each window in row-major order, as XLA's select-and-scatter does),
    computed elementwise: XLA:CPU lowers select-and-scatter to index arrays and a scatter."""
    return jnp.max(_pool_windows(x), axis=-2)


def _max_pool_fwd(x):
    pooled = max_pool_2x(x)
    return pooled, (x, pooled)


def _max_pool_bwd(residuals, dy):
    x, pooled = residuals
    windows = _pool_windows(x)
    is_max = windows == pooled[..., None, :]
    earlier = jnp.cumsum(is_max, axis=-2) - is_max  # maxima before each position in its window
    grads = jnp.where(is_max & (earlier == 0), dy[..., None, :], 0).astype(dy.dtype)
    n, z, y, x_, _, c = grads.shape
    grads = jnp.transpose(grads.reshape(n, z, y, x_, 2, 2, 2, c), (0, 1, 4, 2, 5, 3, 6, 7))
    return (grads.reshape(x.shape),)


max_pool_2x.defvjp(_max_pool_fwd, _max_pool_bwd)


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

        # The CPU formulation also takes the elementwise max-pool gradient (same values).
        pool = max_pool_2x if resolve_conv_impl(self.conv_impl) == "conv2d" else functools.partial(
            nn.max_pool, window_shape=(2, 2, 2), strides=(2, 2, 2)
        )
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
            x = pool(x)
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
