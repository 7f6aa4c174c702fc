"""Independent PyTorch restatement of the reference network and losses (docs/design.md §3 and §4).

This module is test/benchmark infrastructure, not part of the library. It is written from the
spec alone, deliberately without looking at ``syncas_jax.nets`` / ``syncas_jax.losses``, so that
agreement between the two is evidence that both follow the spec. Everything here is plain,
loop-heavy PyTorch chosen for readability over speed.

Contents
--------
* ``ReferenceUNet``            the flat ``nn.Sequential`` 3D U-Net (66 modules, 5,893,296 params)
* ``ProjectionHead`` / ``make_heads``   the four per-voxel projection MLPs
* ``randomize_batchnorm_stats``         make BN statistics non-trivial for conversion tests
* ``save_reference_checkpoint``         write a ``.pth`` with the reference's checkpoint layout
* ``dice_ce_loss_torch``                nnU-Net style soft Dice (per sample) + cross-entropy
* ``contrastive_loss_loop`` / ``contrastive_four_taps_loop``   branch-aware voxel contrastive loss
* ``check_reference_layout``            asserts the module indices and the parameter count

Layout conventions: PyTorch is channels-first, tensors are N x C x D x H x W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Constants fixed by the spec
# ----------------------------------------------------------------------------------------------

#: Total number of parameters of the reference U-Net with batch norm (design §3).
REFERENCE_PARAM_COUNT = 5_893_296

#: Indices (in the flat ``nn.Sequential``) of the ReLUs whose outputs feed the contrastive loss:
#: encoder level 4 first ReLU, decoder stage 2 first ReLU, decoder stage 3 first ReLU,
#: decoder stage 4 last ReLU.
TAP_INDICES = (26, 47, 54, 64)

#: Channels of the four taps, in the order of ``TAP_INDICES``.
TAP_CHANNELS = (128, 64, 32, 16)

#: Output channels of the four encoder levels and of the bottleneck.
ENCODER_CHANNELS = (16, 32, 64, 128)
BOTTLENECK_CHANNELS = 256

#: Output channels of the four decoder stages (stage 1 is the deepest).
DECODER_CHANNELS = (128, 64, 32, 16)

#: Number of output classes (background, coronary).
NUM_CLASSES = 2

#: Every spatial size fed to the network must be a multiple of 16 (four 2x poolings) and at
#: least 32, because reflect padding needs every dimension >= 2 at the bottleneck.
MIN_SPATIAL = 32

# Flat index bookkeeping. Each conv block is 3 modules (Conv3d, BatchNorm3d, ReLU).
_STEM = 0  # indices 0..2
_ENC_START = (3, 10, 17, 24)  # level l: conv 7l+3..+5, conv +3..+5, pool at start+6
_BOTTLENECK = 31  # 31..36
_DEC_START = (37, 44, 51, 58)  # stage s: upsample at start, conv start+1..+3, conv start+4..+6
_HEAD = 65


def conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    """One reference conv block: 3x3x3 conv (reflect padding, no bias) -> BatchNorm3d -> ReLU."""
    return [
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=1, padding=1, padding_mode="reflect", bias=False),
        nn.BatchNorm3d(c_out, eps=1e-5, momentum=0.1),
        nn.ReLU(),
    ]


class ReferenceUNet(nn.Module):
    """The reference 3D U-Net, laid out as one flat ``nn.Sequential`` named ``model``.

    Module indices (each "conv" = Conv3d, BatchNorm3d, ReLU = 3 indices)::

        0..2     stem conv 1->16
        3..9     encoder level 1: conv 16->16, conv 16->16, MaxPool3d(2) at 9
        10..16   encoder level 2: conv 16->32, conv 32->32, pool at 16
        17..23   encoder level 3: conv 32->64, conv 64->64, pool at 23
        24..30   encoder level 4: conv 64->128 (ReLU 26 = tap), conv 128->128, pool at 30
        31..36   bottleneck: conv 128->256, conv 256->256
        37..43   decoder stage 1: Upsample x2 at 37, conv 384->128, conv 128->128
        44..50   decoder stage 2: Upsample at 44, conv 192->64 (ReLU 47 = tap), conv 64->64
        51..57   decoder stage 3: Upsample at 51, conv 96->32 (ReLU 54 = tap), conv 32->32
        58..64   decoder stage 4: Upsample at 58, conv 48->16, conv 16->16 (ReLU 64 = tap)
        65       head Conv3d 16->2, no bias, no norm, no activation

    Skips are the outputs of each encoder level's second ReLU (before pooling). In the decoder
    the skip is concatenated *first*: ``cat([skip, upsampled], dim=1)``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        layers += conv_block(1, ENCODER_CHANNELS[0])  # stem
        c = ENCODER_CHANNELS[0]
        for c_out in ENCODER_CHANNELS:  # encoder levels 1..4
            layers += conv_block(c, c_out)
            layers += conv_block(c_out, c_out)
            layers.append(nn.MaxPool3d(kernel_size=2))
            c = c_out
        layers += conv_block(c, BOTTLENECK_CHANNELS)  # bottleneck
        layers += conv_block(BOTTLENECK_CHANNELS, BOTTLENECK_CHANNELS)
        c = BOTTLENECK_CHANNELS
        for skip_c, c_out in zip(reversed(ENCODER_CHANNELS), DECODER_CHANNELS):  # decoder stages 1..4
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += conv_block(skip_c + c, c_out)
            layers += conv_block(c_out, c_out)
            c = c_out
        layers.append(nn.Conv3d(c, NUM_CLASSES, kernel_size=3, stride=1, padding=1, padding_mode="reflect", bias=False))
        self.model = nn.Sequential(*layers)

    def _run(self, x: torch.Tensor, start: int, stop: int, taps: dict[int, torch.Tensor]) -> torch.Tensor:
        """Apply ``model[start:stop]`` in order, recording the outputs of tap indices."""
        for i in range(start, stop):
            x = self.model[i](x)
            if i in TAP_INDICES:
                taps[i] = x
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: N x 1 x D x H x W (each of D, H, W a multiple of 16 and >= 32).

        Returns ``(logits, [tap26, tap47, tap54, tap64])``; logits N x 2 x D x H x W, taps are the
        raw ReLU outputs (N x C x d x h x w with C = 128, 64, 32, 16 at 1/8, 1/4, 1/2, 1/1 size).
        """
        taps: dict[int, torch.Tensor] = {}
        x = self._run(x, _STEM, _STEM + 3, taps)
        skips = []
        for start in _ENC_START:
            x = self._run(x, start, start + 6, taps)  # two conv blocks
            skips.append(x)  # skip taken before pooling
            x = self.model[start + 6](x)  # MaxPool3d(2)
        x = self._run(x, _BOTTLENECK, _BOTTLENECK + 6, taps)
        for start, skip in zip(_DEC_START, reversed(skips)):
            x = self.model[start](x)  # nearest upsample x2
            x = torch.cat([skip, x], dim=1)  # skip first
            x = self._run(x, start + 1, start + 7, taps)
        logits = self.model[_HEAD](x)
        return logits, [taps[i] for i in TAP_INDICES]


class ProjectionHead(nn.Module):
    """Per-voxel MLP Linear(C->128) -> ReLU -> Linear(128->128), then L2 normalisation over channels."""

    def __init__(self, in_channels: int, out_channels: int = 128, hidden: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x C x d x h x w -> N x 128 x d x h x w, unit L2 norm along dim 1."""
        y = self.mlp(x.movedim(1, -1))  # channels last so Linear acts per voxel
        return F.normalize(y.movedim(-1, 1), dim=1)


def make_heads() -> nn.ModuleList:
    """The four projection heads, one per tap (C = 128, 64, 32, 16).

    State-dict keys: ``{k}.mlp.0.weight``, ``{k}.mlp.0.bias``, ``{k}.mlp.2.weight``, ``{k}.mlp.2.bias``.
    """
    return nn.ModuleList([ProjectionHead(c) for c in TAP_CHANNELS])


def check_reference_layout(net: ReferenceUNet | None = None) -> None:
    """Assert that the flat Sequential has the spec's module indices, shapes and parameter count."""
    net = ReferenceUNet() if net is None else net
    m = net.model
    assert len(m) == 66, len(m)

    def is_block(i: int, c_in: int, c_out: int) -> bool:
        conv, bn, relu = m[i], m[i + 1], m[i + 2]
        return (
            isinstance(conv, nn.Conv3d)
            and conv.in_channels == c_in
            and conv.out_channels == c_out
            and conv.kernel_size == (3, 3, 3)
            and conv.padding_mode == "reflect"
            and conv.bias is None
            and isinstance(bn, nn.BatchNorm3d)
            and bn.num_features == c_out
            and bn.eps == 1e-5
            and bn.momentum == 0.1
            and isinstance(relu, nn.ReLU)
        )

    assert is_block(0, 1, 16)
    for start, (c_in, c_out) in zip(_ENC_START, [(16, 16), (16, 32), (32, 64), (64, 128)]):
        assert is_block(start, c_in, c_out) and is_block(start + 3, c_out, c_out), start
        assert isinstance(m[start + 6], nn.MaxPool3d), start + 6
    assert (_ENC_START[0] + 6, _ENC_START[3] + 6) == (9, 30)
    assert is_block(31, 128, 256) and is_block(34, 256, 256)
    for start, (c_in, c_out) in zip(_DEC_START, [(384, 128), (192, 64), (96, 32), (48, 16)]):
        assert isinstance(m[start], nn.Upsample) and m[start].mode == "nearest", start
        assert is_block(start + 1, c_in, c_out) and is_block(start + 4, c_out, c_out), start
    assert _DEC_START == (37, 44, 51, 58)
    head = m[65]
    assert isinstance(head, nn.Conv3d) and (head.in_channels, head.out_channels) == (16, 2) and head.bias is None
    # The taps are ReLUs with the documented channel counts.
    for i, c in zip(TAP_INDICES, TAP_CHANNELS):
        assert isinstance(m[i], nn.ReLU) and m[i - 2].out_channels == c, i
    # Tap 26 is the first ReLU of encoder level 4, 47/54 the first ReLUs of decoder stages 2/3,
    # 64 the last ReLU of decoder stage 4.
    assert (_ENC_START[3] + 2, _DEC_START[1] + 3, _DEC_START[2] + 3, _DEC_START[3] + 6) == TAP_INDICES
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == REFERENCE_PARAM_COUNT, n_params


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_batchnorm_stats(net: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    running_mean ~ N(0, 0.5), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.2),
    num_batches_tracked = a random integer in [1, 1000).
    """
    for mod in net.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            c = mod.num_features
            mod.running_mean.copy_(0.5 * torch.randn(c, generator=generator))
            mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
            mod.weight.copy_(0.5 + torch.rand(c, generator=generator))
            mod.bias.copy_(0.2 * torch.randn(c, generator=generator))
            mod.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))


def save_reference_checkpoint(path, net: ReferenceUNet, heads: nn.ModuleList, epoch: int = 3) -> dict:
    """Write a checkpoint with the reference's layout and return the dict that was saved.

    Keys: ``network_weights`` (``model.{i}.weight`` / ``.running_mean`` / ... of the flat Sequential),
    ``projection_heads_weights`` (``{k}.mlp.{0,2}.{weight,bias}``), ``optimizer_state`` (an SGD
    state dict with momentum buffers), ``current_epoch``, ``_best_ema``, ``init_args``. Only
    tensors and plain Python containers/values are stored, so ``torch.load(path, weights_only=True)``
    works.
    """
    params = list(net.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.99, nesterov=True, weight_decay=3e-5)
    # One step with lr = 0 and zero gradients fills the momentum buffers without moving weights.
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for group in opt.param_groups:
        group["lr"] = 1e-3
    ckpt = {
        "network_weights": net.state_dict(),
        "projection_heads_weights": heads.state_dict(),
        "optimizer_state": opt.state_dict(),
        "current_epoch": int(epoch),
        "_best_ema": 0.6789,
        "init_args": {
            "plans": "CTA_finetune_baseline",
            "configuration": "3d_fullres",
            "fold": 0,
            "num_anchor": 512,
            "neg_per_anchor": 5,
            "pseudo_neg_per_anchor": 1,
            "temperature": 0.3,
            "alpha": 0.5,
            "branch_aware": 1,
            "patch_size": [32, 224, 224],
            "spacing": [3.0, 0.349609375, 0.349609375],
        },
    }
    torch.save(ckpt, path)
    return ckpt


# ----------------------------------------------------------------------------------------------
# Dice + cross-entropy (nnU-Net DC_and_CE_loss with SoftDiceLoss(batch_dice=False, do_bg=False))
# ----------------------------------------------------------------------------------------------


def dice_ce_loss_torch(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (per sample, per class, background excluded) + mean voxel cross-entropy.

    logits: N x 2 x D x H x W; target: N x D x H x W integer labels in {0, 1}.
    For each sample n and class c (spatial sums only, i.e. not batch Dice):
        tp = sum p*t, fp = sum p*(1-t), fn = sum (1-p)*t
        dice = (2 tp + smooth) / clip(2 tp + fp + fn + smooth, min=1e-8)
    dice_term = -mean over n and foreground classes c >= 1 of dice;
    ce = mean over all voxels of -log softmax(logits)[target].
    Returns dice_term + ce.
    """
    num_classes = logits.shape[1]
    target = target.long()
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)  # N x C x D x H x W
    axes = tuple(range(2, logits.ndim))  # spatial axes only
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    dice = (2 * tp + smooth) / torch.clip(2 * tp + fp + fn + smooth, min=1e-8)  # N x C
    dice_term = -dice[:, 1:].mean()  # background excluded
    ce = F.cross_entropy(logits, target)  # mean over N * D * H * W voxels
    return dice_term + ce


# ----------------------------------------------------------------------------------------------
# Branch-aware voxel contrastive loss (straightforward per-item loop)
# ----------------------------------------------------------------------------------------------


def resize_labels_nearest(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour resize of N x D x H x W integer labels to N x d x h x w.

    Uses ``F.interpolate(mode="nearest")`` on a float copy: output voxel i reads input voxel
    ``floor(i * D / d)``; for an integer factor s that is ``labels[..., ::s, ::s, ::s]`` (the
    first voxel of each s^3 block). Values (including -1) are preserved exactly.
    """
    if tuple(labels.shape[1:]) == tuple(size):
        return labels.long()
    resized = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].round().long()


def _draw(n_items: int, count: int, generator: torch.Generator | None, replace: bool) -> torch.Tensor:
    """``count`` indices into range(n_items): a random permutation prefix or i.i.d. uniform draws."""
    if replace:
        return torch.randint(0, n_items, (count,), generator=generator)
    return torch.randperm(n_items, generator=generator)[:count]


def contrastive_loss_loop(
    f1: torch.Tensor,
    f2: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_anchor: int = 512,
    neg_per_anchor: int = 5,
    pseudo_neg_per_anchor: int = 1,
    temperature: float = 0.3,
    alpha: float = 0.5,
    branch_aware: bool = True,
    generator: torch.Generator | None = None,
    min_count: int = 10,
) -> torch.Tensor:
    """Voxel contrastive loss between two views for one tap (design §4).

    f1, f2: N x C x d x h x w, already L2-normalised over C (view 1 / view 2 projections).
    labels: N x D x H x W integer branch labels at full resolution: -1 ignore, 0 background,
        1 largest branch, > 1 other branches. Resized to d x h x w by nearest neighbour.

    Per batch item:
      P = {label == 1} (branch_aware) or {label > 0} (plain);  N = {label == 0};
      Q = {label > 1} (branch_aware) or empty (plain); label -1 belongs to none of them.
      Skip the item if |P| < 10 or |N| < 10.
      Anchors: ``num_anchor`` voxels of P (without replacement if |P| >= num_anchor, else with),
        features from f1. Positive: the same voxel in f2.
      Per anchor ``neg_per_anchor`` negatives from N and ``pseudo_neg_per_anchor`` pseudo-negatives
        from Q, drawn with replacement, features from f2 (no pseudo-negative columns if Q is empty).
      logits = [a.pos, a.neg_1..k, alpha * a.pseudo_1..m] / temperature
        (alpha applied to the already temperature-scaled pseudo-negative logits).
      loss_item = mean over anchors of cross-entropy(logits, target 0).
    Returns the mean of loss_item over non-skipped items, or a 0.0 tensor if all are skipped.
    """
    n, c = f1.shape[:2]
    lab = resize_labels_nearest(labels, tuple(f1.shape[2:])).reshape(n, -1)
    a_flat = f1.reshape(n, c, -1)
    b_flat = f2.reshape(n, c, -1)
    losses = []
    for i in range(n):
        li = lab[i]
        if branch_aware:
            pos_idx = torch.nonzero(li == 1).flatten()
            pseudo_idx = torch.nonzero(li > 1).flatten()
        else:
            pos_idx = torch.nonzero(li > 0).flatten()
            pseudo_idx = pos_idx[:0]  # empty
        neg_idx = torch.nonzero(li == 0).flatten()
        if len(pos_idx) < min_count or len(neg_idx) < min_count:
            continue

        # Anchors and their positives (same voxel, other view).
        sel = pos_idx[_draw(len(pos_idx), num_anchor, generator, replace=len(pos_idx) < num_anchor)]
        anchors = a_flat[i][:, sel].T  # A x C
        positives = b_flat[i][:, sel].T  # A x C
        cols = [(anchors * positives).sum(-1, keepdim=True) / temperature]  # A x 1

        # Negatives from the background, with replacement.
        neg_sel = neg_idx[_draw(len(neg_idx), num_anchor * neg_per_anchor, generator, replace=True)]
        negatives = b_flat[i][:, neg_sel].T.reshape(num_anchor, neg_per_anchor, c)  # A x K x C
        cols.append(torch.einsum("ac,akc->ak", anchors, negatives) / temperature)

        # Pseudo-negatives from the other branches, with replacement, down-weighted by alpha.
        if len(pseudo_idx) > 0 and pseudo_neg_per_anchor > 0:
            q_sel = pseudo_idx[_draw(len(pseudo_idx), num_anchor * pseudo_neg_per_anchor, generator, replace=True)]
            pseudo = b_flat[i][:, q_sel].T.reshape(num_anchor, pseudo_neg_per_anchor, c)  # A x M x C
            cols.append(alpha * (torch.einsum("ac,amc->am", anchors, pseudo) / temperature))

        logits = torch.cat(cols, dim=1)  # A x (1 + K [+ M])
        target = torch.zeros(num_anchor, dtype=torch.long, device=logits.device)
        losses.append(F.cross_entropy(logits, target))  # mean over anchors
    if not losses:
        return f1.new_zeros(())
    return torch.stack(losses).mean()


def contrastive_four_taps_loop(taps1, taps2, labels: torch.Tensor, **kw) -> torch.Tensor:
    """Sum of ``contrastive_loss_loop`` over the four taps (same keyword arguments for each).

    taps1, taps2: sequences of projected, L2-normalised features of view 1 / view 2; a shared
    ``generator`` in ``kw`` is consumed tap after tap, in order.
    """
    total = None
    for f1, f2 in zip(taps1, taps2, strict=True):
        term = contrastive_loss_loop(f1, f2, labels, **kw)
        total = term if total is None else total + term
    return total


# ----------------------------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------------------------


def self_check() -> None:
    import os
    import tempfile

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    net = ReferenceUNet()
    check_reference_layout(net)
    heads = make_heads()
    randomize_batchnorm_stats(net, g)
    net.eval()

    # 32 per dimension is the smallest size the reflect-padded bottleneck accepts (see MIN_SPATIAL).
    x = torch.randn(1, 1, 32, 32, 32, generator=g)
    with torch.no_grad():
        logits, taps = net(x)
        feats = [h(t) for h, t in zip(heads, taps)]
    assert logits.shape == (1, 2, 32, 32, 32), logits.shape
    expected = [(1, 128, 4, 4, 4), (1, 64, 8, 8, 8), (1, 32, 16, 16, 16), (1, 16, 32, 32, 32)]
    assert [tuple(t.shape) for t in taps] == expected, [t.shape for t in taps]
    # The returned taps are exactly the outputs of modules 26, 47, 54, 64 (checked with hooks).
    hooked = {}
    handles = [
        net.model[i].register_forward_hook(lambda m, a, out, i=i: hooked.__setitem__(i, out)) for i in TAP_INDICES
    ]
    with torch.no_grad():
        logits_again, _ = net(x)
    for h in handles:
        h.remove()
    assert torch.equal(logits_again, logits)
    assert all(torch.equal(hooked[i], t) for i, t in zip(TAP_INDICES, taps))
    for f, t in zip(feats, taps):
        assert f.shape == (t.shape[0], 128, *t.shape[2:])
        assert torch.allclose(f.norm(dim=1), torch.ones(()), atol=1e-5)

    # Checkpoint round trip with the safe loader.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ref.pth")
        save_reference_checkpoint(path, net, heads, epoch=3)
        ck = torch.load(path, weights_only=True)
    assert set(ck) == {
        "network_weights",
        "projection_heads_weights",
        "optimizer_state",
        "current_epoch",
        "_best_ema",
        "init_args",
    }
    nw = ck["network_weights"]
    assert nw["model.0.weight"].shape == (16, 1, 3, 3, 3)
    assert "model.1.running_mean" in nw and "model.1.num_batches_tracked" in nw
    assert nw["model.65.weight"].shape == (2, 16, 3, 3, 3) and "model.65.bias" not in nw
    assert ck["projection_heads_weights"]["3.mlp.0.weight"].shape == (128, 16)
    assert ck["current_epoch"] == 3
    for k, v in net.state_dict().items():
        assert torch.equal(nw[k], v), k

    # Dice + CE: perfect confident logits give about -1; random ones something in between.
    tgt = (torch.rand(2, 8, 8, 8, generator=g) > 0.7).long()
    perfect = 50.0 * (2 * F.one_hot(tgt, 2).movedim(-1, 1).float() - 1)
    assert abs(dice_ce_loss_torch(perfect, tgt).item() + 1.0) < 1e-4
    rnd = dice_ce_loss_torch(torch.randn(2, 2, 8, 8, 8, generator=g), tgt)
    assert -1.0 < rnd.item() < 2.0

    # Contrastive loss on random labels: full-res 32^3 with a few branches; one skipped item.
    labels = torch.randint(-1, 4, (2, 32, 32, 32), generator=g)
    labels[1] = 0  # no positives -> item 1 is skipped
    with torch.no_grad():
        feats2 = [h(t + 0.1 * torch.randn(t.shape, generator=g)) for h, t in zip(heads, taps)]
    feats_b = [torch.cat([f, f]) for f in feats]
    feats2_b = [torch.cat([f, f]) for f in feats2]
    for ba in (True, False):
        loss = contrastive_four_taps_loop(feats_b, feats2_b, labels, branch_aware=ba, generator=g)
        assert torch.isfinite(loss) and loss.item() > 0, loss
    assert contrastive_loss_loop(feats[0], feats2[0], labels[1:]).item() == 0.0
    # Identical views and orthogonal negatives give a near-zero loss.
    f = torch.zeros(1, 8, 4, 4, 4)
    lab = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    lab[0, :2] = 1
    f[0, 0][lab[0] == 1] = 1.0
    f[0, 1][lab[0] == 0] = 1.0
    small = contrastive_loss_loop(f, f, lab, temperature=0.05, generator=g)
    assert small.item() < 1e-3, small
    print("torch_reference self-test passed:", f"{sum(p.numel() for p in net.parameters()):,} params")


if __name__ == "__main__":
    self_check()
