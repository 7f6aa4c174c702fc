"""Alternative formulations of the U-Net's 3×3×3 "VALID" convolution (input already reflect-padded).

All take x (N, D+2, H+2, W+2, Cin) channels-last and a kernel (3, 3, 3, Cin, Cout) (Flax's DHWIO)
and return (N, D, H, W, Cout): the same function as
`lax.conv_general_dilated(x, k, (1, 1, 1), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))`,
summed in a different order (so equal to float rounding, not bit for bit).

Why they exist: jaxlib 0.10's XLA:CPU sends 3-D convolutions to a generic Eigen kernel, but
2-D (and 1-D) convolutions and dots to YNNPACK ("__ynn_fusion" in the compiled HLO), which is
much faster for the few-channel, many-voxel layers of this U-Net. Folding kernel taps into the
channel axis turns the 3-D conv into a 2-D or 1-D one.

`use_formulation(name)` swaps the formulation into an *unchanged* Flax model through
`nn.intercept_methods`, so the benchmark measures exactly our network and parameters.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from syncas_jax.nets.unet import conv3x3x3_valid

DN3 = ("NDHWC", "DHWIO", "NDHWC")


def conv_xla(x, k):
    """The default: one 3-D convolution (what flax.linen.Conv emits)."""
    return lax.conv_general_dilated(x, k, (1, 1, 1), "VALID", dimension_numbers=DN3)


def conv_ncdhw(x, k):
    """Channels-first 3-D convolution between transposes (layout experiment)."""
    y = lax.conv_general_dilated(
        jnp.transpose(x, (0, 4, 1, 2, 3)),
        jnp.transpose(k, (4, 3, 0, 1, 2)),
        (1, 1, 1),
        "VALID",
        dimension_numbers=("NCDHW", "OIDHW", "NCDHW"),
    )
    return jnp.transpose(y, (0, 2, 3, 4, 1))


def conv_ndhwc_as_ncdhw(x, k):
    """Channels-last operands, but ask XLA for a channels-first output layout (dimension_numbers only)."""
    y = lax.conv_general_dilated(x, k, (1, 1, 1), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NCDHW"))
    return jnp.transpose(y, (0, 2, 3, 4, 1))


def _shifted(x, offsets, sizes):
    """x[:, a:a+D, b:b+H, c:c+W] for one (a, b, c) tap offset."""
    (a, b, c), (d, h, w) = offsets, sizes
    return x[:, a : a + d, b : b + h, c : c + w, :]


def conv_im2col(x, k):
    """27 shifted slices concatenated on channels, then one (N·D·H·W, 27·Cin) × (27·Cin, Cout) dot."""
    n, dp, hp, wp, cin = x.shape
    sizes = (dp - 2, hp - 2, wp - 2)
    cols = jnp.concatenate(
        [_shifted(x, (a, b, c), sizes) for a in range(3) for b in range(3) for c in range(3)], axis=-1
    )
    return jnp.einsum("ndhwk,ko->ndhwo", cols, k.reshape(27 * cin, -1))


def conv_taps27(x, k):
    """Sum over the 27 kernel taps of shifted (N·D·H·W, Cin) × (Cin, Cout) dots."""
    sizes = (x.shape[1] - 2, x.shape[2] - 2, x.shape[3] - 2)
    out = 0.0
    for a in range(3):
        for b in range(3):
            for c in range(3):
                out = out + jnp.einsum("ndhwc,co->ndhwo", _shifted(x, (a, b, c), sizes), k[a, b, c])
    return out


def conv_sum_d(x, k):
    """'3 × 2-D conv': sum over kd of a 2-D conv (batch N·D) of the depth-shifted slice."""
    n, dp, hp, wp, cin = x.shape
    d = dp - 2
    out = 0.0
    for a in range(3):
        xs = x[:, a : a + d].reshape(n * d, hp, wp, cin)
        out = out + lax.conv_general_dilated(xs, k[a], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out.reshape(n, d, hp - 2, wp - 2, -1)


def conv_fold_d(x, k):
    """Fold the 3 depth taps into channels: one 2-D conv with 3·Cin input channels."""
    n, dp, hp, wp, cin = x.shape
    d = dp - 2
    xs = jnp.concatenate([x[:, a : a + d] for a in range(3)], axis=-1).reshape(n * d, hp, wp, 3 * cin)
    kk = jnp.transpose(k, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * cin, -1)  # (kh, kw, kd·Cin, Cout)
    y = lax.conv_general_dilated(xs, kk, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(n, d, hp - 2, wp - 2, -1)


def conv_fold_dh(x, k):
    """Fold the 3×3 (depth, height) taps into channels: one 1-D conv along W with 9·Cin channels."""
    n, dp, hp, wp, cin = x.shape
    d, h = dp - 2, hp - 2
    xs = jnp.concatenate([x[:, a : a + d, b : b + h] for a in range(3) for b in range(3)], axis=-1)
    xs = xs.reshape(n * d * h, wp, 9 * cin)
    kk = jnp.transpose(k, (2, 0, 1, 3, 4)).reshape(3, 9 * cin, -1)  # (kw, kd·kh·Cin, Cout)
    y = lax.conv_general_dilated(xs, kk, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
    return y.reshape(n, d, h, wp - 2, -1)


_EIGEN_PAD = 3  # rows of zero padding that make XLA:CPU's YNNPACK matcher decline a 2-D conv (padding >= kernel)


def _conv2d_eigen(xs, kk):
    """VALID 2-D conv (NHWC, HWIO) that XLA:CPU runs with Eigen rather than YNNPACK.

    jaxlib 0.10 hands every plain 2-D conv to YNNPACK, which is slower than Eigen's spatial
    convolution for these shapes; it declines convs whose padding on one axis reaches the
    kernel size. Pad 3 zero rows on top, drop the 3 extra output rows: same values, about
    3/H more work. Relies on a matcher detail, so re-measure after jaxlib upgrades (the flag
    --xla_cpu_experimental_ynn_fusion_type=individual_dot gets the same effect process-wide)."""
    y = lax.conv_general_dilated(xs, kk, (1, 1), ((_EIGEN_PAD, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[:, _EIGEN_PAD:]


def conv_sum_d_eigen(x, k):
    """sum_d with Eigen 2-D convs (see `_conv2d_eigen`)."""
    n, dp, hp, wp, cin = x.shape
    d = dp - 2
    out = 0.0
    for a in range(3):
        out = out + _conv2d_eigen(x[:, a : a + d].reshape(n * d, hp, wp, cin), k[a])
    return out.reshape(n, d, hp - 2, wp - 2, -1)


def conv_fold_d_eigen(x, k):
    """fold_d with an Eigen 2-D conv (see `_conv2d_eigen`)."""
    n, dp, hp, wp, cin = x.shape
    d = dp - 2
    xs = jnp.concatenate([x[:, a : a + d] for a in range(3)], axis=-1).reshape(n * d, hp, wp, 3 * cin)
    kk = jnp.transpose(k, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * cin, -1)
    return _conv2d_eigen(xs, kk).reshape(n, d, hp - 2, wp - 2, -1)


def conv_fold_dh2d(x, k):
    """As fold_dh, but written as a 2-D conv with a unit height (1×3 kernel) so XLA can hand it to YNNPACK."""
    n, dp, hp, wp, cin = x.shape
    d, h = dp - 2, hp - 2
    xs = jnp.concatenate([x[:, a : a + d, b : b + h] for a in range(3) for b in range(3)], axis=-1)
    xs = xs.reshape(n * d * h, 1, wp, 9 * cin)
    kk = jnp.transpose(k, (2, 0, 1, 3, 4)).reshape(1, 3, 9 * cin, -1)  # (1, kw, kd·kh·Cin, Cout)
    y = lax.conv_general_dilated(xs, kk, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(n, d, h, wp - 2, -1)


def with_valid_vjp(forward):
    """`forward` with a custom VJP whose input gradient is again a VALID conv of the same formulation
    (zero-padded cotangent, flipped and transposed kernel) instead of XLA's padded transpose-conv,
    which XLA:CPU leaves to Eigen. The kernel gradient is `forward`'s own (XLA-derived) VJP."""

    @jax.custom_vjp
    def conv(x, k):
        return forward(x, k)

    def conv_fwd(x, k):
        return forward(x, k), (x, k)

    def conv_bwd(residuals, dy):
        x, k = residuals
        dy_padded = jnp.pad(dy, ((0, 0), (2, 2), (2, 2), (2, 2), (0, 0)))
        dx = forward(dy_padded, jnp.swapaxes(jnp.flip(k, (0, 1, 2)), 3, 4))
        _, kernel_vjp = jax.vjp(lambda kk: forward(x, kk), k)
        (dk,) = kernel_vjp(dy)
        return dx, dk

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


FORMULATIONS = {
    "xla": conv_xla,
    "ncdhw": conv_ncdhw,
    "ncdhw_out": conv_ndhwc_as_ncdhw,
    "im2col": conv_im2col,
    "taps27": conv_taps27,
    "sum_d": conv_sum_d,
    "fold_d": conv_fold_d,
    "fold_dh": conv_fold_dh,
    "fold_dh2d": conv_fold_dh2d,
    "sum_d_eigen": conv_sum_d_eigen,
    "fold_d_eigen": conv_fold_d_eigen,
}
FORMULATIONS.update(
    {f"{name}+vjp": with_valid_vjp(FORMULATIONS[name]) for name in ("sum_d", "fold_d", "fold_dh", "fold_dh2d")}
)
# What conv_impl "conv2d" computes today (depth taps as output channels, custom VJP); before
# issue 18 it was sum_d_eigen with XLA's gradient.
FORMULATIONS["conv2d_library"] = conv3x3x3_valid


@contextlib.contextmanager
def use_formulation(name: str):
    """Within the context, every 3×3×3 VALID flax Conv of an applied model computes with `name`."""
    fn = FORMULATIONS[name]

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            name == "xla"
            or not isinstance(module, nn.Conv)
            or context.method_name != "__call__"
            or tuple(module.kernel_size) != (3, 3, 3)
            or module.padding != "VALID"
            or module.is_initializing()
        ):
            return next_fun(*args, **kwargs)
        (x,) = args
        kernel = module.get_variable("params", "kernel")
        bias = module.get_variable("params", "bias") if module.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)
        y = fn(x, kernel)
        return y if bias is None else y + bias

    with nn.intercept_methods(interceptor):
        yield
