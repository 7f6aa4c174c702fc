"""Label id → non-contrast HU tables, in order of application (later entries win overlaps).

Label ids are TotalSegmentator's: the `total` task as is (1–117) and the
`heartchambers_highres` task shifted by +117 (118–124); the coronary arteries are 128.
"""

from __future__ import annotations

CORONARY_ID = 128
HEARTCHAMBERS_OFFSET = 117

# (label id, structure, HU); the reference's table and order.
REFERENCE: tuple[tuple[int, str, float], ...] = (
    (123, "aorta", 35.0),
    (CORONARY_ID, "coronary arteries", 35.0),
    (62, "superior vena cava", 35.0),
    (63, "inferior vena cava", 35.0),
    (124, "pulmonary artery", 35.0),
    (53, "pulmonary vein", 35.0),
    (118, "myocardium", 50.0),
    (119, "left atrium", 40.0),
    (120, "left ventricle", 40.0),
    (121, "right atrium", 40.0),
    (122, "right ventricle", 40.0),
    (61, "left atrial appendage", 40.0),
    (5, "liver", 55.0),
    (6, "stomach", 50.0),
    (15, "esophagus", 40.0),
)

# Contrast-filled vessels of the `total` task that the reference leaves bright. Applied
# first, so every structure of the reference table keeps its value where they overlap.
EXTRA_VESSELS: tuple[tuple[int, str, float], ...] = (
    (52, "aorta (total task)", 35.0),
    (54, "brachiocephalic trunk", 35.0),
    (55, "right subclavian artery", 35.0),
    (56, "left subclavian artery", 35.0),
    (57, "right common carotid artery", 35.0),
    (58, "left common carotid artery", 35.0),
    (59, "left brachiocephalic vein", 40.0),
    (60, "right brachiocephalic vein", 40.0),
    (64, "portal and splenic vein", 40.0),
)

EXTENDED: tuple[tuple[int, str, float], ...] = EXTRA_VESSELS + REFERENCE

TABLES: dict[str, tuple[tuple[int, str, float], ...]] = {"reference": REFERENCE, "extended": EXTENDED}


def get_table(name: str) -> tuple[tuple[int, str, float], ...]:
    """The HU table called `name` ("reference" or "extended")."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown HU table {name!r}; choose one of {', '.join(TABLES)}") from None
