"""The coronary arteries a calcium report names, and their ids in artery-labelled masks (design §13).

One uint8 convention everywhere: the phantom's true artery map (`{id}.arteries.nii.gz`), the
geometric labelling of a predicted mask (`infer --arteries`, `syncas_jax.calcium.arteries`), the
calcium lesion maps of realistic renders (`synth --realistic`, values 1–5 for coronary calcium) and
the report's per-artery table. Side branches belong to the artery they leave: diagonals to the
LAD, obtuse marginals to the LCX, the acute marginal and the posterior descending artery to the
RCA (right-dominant anatomy, as the phantom draws it).
"""

from __future__ import annotations

ARTERIES = ("LM", "LAD", "LCX", "RCA")  # ids 1, 2, 3, 4
ARTERY_IDS = {name: i + 1 for i, name in enumerate(ARTERIES)}
OTHER = "other"  # coronary voxels or lesions no artery could be given
OTHER_ID = 5
ARTERY_NAMES = {**{i: name for name, i in ARTERY_IDS.items()}, OTHER_ID: OTHER}
REPORT_GROUPS = (*ARTERIES, OTHER)  # the rows of a report's per-artery table
ARTERIES_SUFFIX = ".arteries.nii.gz"  # beside a case's label map: the artery of every coronary voxel

# The artery each branch of a right-dominant tree belongs to (the phantom's branch names).
BRANCH_ARTERY = {
    "lm": "LM", "lad": "LAD", "d1": "LAD", "d2": "LAD", "lcx": "LCX", "om": "LCX",
    "rca": "RCA", "am": "RCA", "pda": "RCA",
}  # fmt: skip


def artery_name(artery_id: int) -> str:
    """'LM', 'LAD', 'LCX', 'RCA' for ids 1–4; 'other' for anything else."""
    return ARTERY_NAMES.get(int(artery_id), OTHER)
