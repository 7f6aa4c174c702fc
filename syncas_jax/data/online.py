"""Online synthesis of a batch: CTA crops (`cta_loader`) → two windowed synthetic NCCT views per patch.

`OnlineRenderer` is called inside the jitted train (and validation) step, so each device renders
its own shard of the batch. Per item: `synth.online.render_crops` (HU reassignment →
acquisition → plaques → whole HU) → the CT window of `transforms.window_ct` → voxels outside the
volume set to the loader's padding value. The output has the NCCT loader's batch layout, so
augmentation and the loss see exactly what they see with offline synthesis.

Keys: item i of a batch renders with ``split(key, B)[i]``; the train step derives `key` from
(seed, global step), so a view is a function of (seed, step, item).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from syncas_jax.data.cta_loader import CtaGeometry
from syncas_jax.data.layout import IMAGE_PAD
from syncas_jax.data.transforms import window_ct
from syncas_jax.synth.hu_table import get_table
from syncas_jax.synth.online import CROP_MARGIN, CtaCrop, render_crops
from syncas_jax.synth.plaques import plaque_box

Batch = dict[str, jnp.ndarray]


def batch_crops(batch: Batch) -> CtaCrop:
    """The batched `CtaCrop` of a CTA loader batch (leading axis B on every field)."""
    return CtaCrop(
        hu=batch["hu"],
        organs=batch["organs"],
        lumen=batch["label"] > 0,
        sinogram=batch["sinogram"],
        photon_scale=batch["photons"],
        centre_offset=batch["centre_offset"],
        origin_mm=batch["origin_mm"],
        centreline=batch["centreline"],
        centreline_count=batch["centreline_count"],
    )


@dataclass(frozen=True)
class OnlineRenderer:
    """Renders CTA batches into {"views": float32 (B, views, Zp, Yp, Xp) windowed, "label": int16 (B, Zp, Yp, Xp)}.

    offsets: random HU offsets (training) or the table as is (validation: realistic renders).
    """

    geometry: CtaGeometry
    margin: int = CROP_MARGIN
    views: int = 2
    offsets: bool = True

    def __call__(self, key: jax.Array, batch: Batch) -> Batch:
        g = self.geometry
        render = functools.partial(
            render_crops,
            views=self.views,
            offsets=self.offsets,
            table=get_table(g.hu_table),
            spacing=g.spacing,
            box=plaque_box(g.max_lumen_radius_mm, g.spacing),
            margin=self.margin,
        )
        label = batch["label"]
        hu = render(jax.random.split(key, label.shape[0]), batch_crops(batch))
        views = jnp.where((label >= 0)[:, None], window_ct(hu), IMAGE_PAD)
        return {"views": views.astype(jnp.float32), "label": label}
