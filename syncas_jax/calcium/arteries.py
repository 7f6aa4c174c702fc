"""Which coronary artery each voxel of a coronary mask belongs to: LM, LAD, LCX, RCA (design §13).

Geometric labelling from the mask alone (no image, no training), so it applies to any mask: ours,
a reference network's, a hand-drawn one. Arrays are (Z, Y, X) in the canonical orientation
(`syncas_jax.data.orientation`: slices inferior → superior, rows anterior → posterior, columns
patient right → left); spacing (z, y, x) mm; ids from `syncas_jax.common.arteries`.

1. **Trees.** The mask's 26-connected components of at least `MIN_TREE_FRACTION` of its volume
   are candidate trees. The largest is the left tree (LM, LAD and LCX hold more lumen than the
   RCA, and a predicted RCA is the one more often broken by gaps); of the candidates lying to the
   patient's right of it on average (mean column), the one that reaches highest is the right tree
   (the RCA leaves the aortic root at the top of the heart; a piece cut off by a gap starts
   lower). A lone tree is left or right by the side of the field of view's centre its top lies on.
2. **The right tree** is the RCA (with its acute marginal and posterior descending branches).
3. **The ostia.** Both trees leave the aortic root, so their ostia are the closest pair of tips
   (endpoints of the trees' skeletons), one per tree, preferring high ones: the pair minimising
   distance − `OSTIUM_HEIGHT_WEIGHT` × mean height (mm). The closest pair alone can be the distal
   LCX meeting the RCA at the crux, low on the heart; the most superior voxel alone can be an LCX
   that climbs the atrioventricular groove above the left main. Of the `OSTIUM_CANDIDATES` best
   left tips, the one with the widest lumen within `OSTIUM_WIDTH_MM` is the ostium: the LM is
   the widest coronary artery, and on a predicted mask whose proximal RCA is missing the pairing
   alone can pick a distal LCX tip. A lone left tree's ostium is its most superior tip.
4. **The left tree.** From its ostium, geodesic distances along the mask (26-neighbour steps in
   mm) give the farthest voxel; the path there runs down one main artery. Voxels farther than
   `BRANCH_MIN_MM` from that path form branches; of the branches at least half as long as the
   longest, the one joining the path closest to the ostium is the other main artery. The LM is the
   start of the main path while it stays within the trunk's diameter (twice the tree's largest
   distance to its edge) of the other path, along the mask: two shortest paths through a wide
   trunk hug its opposite walls and need not share voxels. Of the two arms, the one
   whose territory lies more anterior is the LAD (anterior interventricular groove), the other the
   LCX (left atrioventricular groove, posterior). Every voxel then takes the label of the path
   nearest to it along the mask (a geodesic Voronoi partition), so diagonals go with the LAD and
   marginals with the LCX.
5. **Pieces** (a gap in the mask splits a vessel, or a false positive): each other component
   takes the artery of the labelled voxel nearest to it (in mm) when that is within
   `ATTACH_MAX_MM`, else "other".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import takewhile

import cc3d
import edt
import numpy as np
from scipy.ndimage import convolve
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from syncas_jax.common.arteries import ARTERY_IDS, OTHER_ID

MIN_TREE_FRACTION = 0.05  # of the mask's volume: a component this large may be a whole tree
BRANCH_MIN_MM = 4.0  # farther than this from the main path along the mask: a branch, not the vessel's own lumen
ATTACH_MAX_MM = 15.0  # a piece further than this from every labelled voxel is "other"
OSTIUM_CANDIDATES = 2  # best-paired tips tried as the left ostium: the wider (the LM) wins
OSTIUM_WIDTH_MM = 4.0  # how far from a tip its lumen width is measured
OSTIUM_HEIGHT_WEIGHT = 0.5  # mm of distance a mm of height is worth when pairing the ostia (set on phantoms 0-7)
LM, LAD, LCX, RCA = (ARTERY_IDS[name] for name in ("LM", "LAD", "LCX", "RCA"))
_OFFSETS = [(dz, dy, dx) for dz in (0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) > (0, 0, 0)]


def label_arteries(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """uint8 (Z, Y, X): the artery id of every voxel of the coronary `mask` (value > 0), 0 outside it."""
    mask = np.asarray(mask) > 0
    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return out
    components = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    left, right = _pick_trees(components, sizes, mask.shape[2])
    if right:
        out[components == right] = RCA
    if left:
        box, tree = _component_box(components, left)
        ostia = _left_ostia(tree, box, components == right if right else None, spacing)[:OSTIUM_CANDIDATES]
        ostium = max(ostia, key=lambda tip: _width_near(tree, tip, spacing))  # the LM is the widest artery
        _, labelled = _label_left_tree(tree, _voxel_graph(tree, spacing), ostium, spacing)
        out[box][tree] = labelled[tree]
    _attach_pieces(out, components, [c for c in (left, right) if c], spacing)
    return out


def artery_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of the voxels labelled in both (Z, Y, X) artery maps (values > 0) where the labels agree (nan if none)."""
    both = (np.asarray(predicted) > 0) & (np.asarray(truth) > 0)
    if not both.any():
        return float("nan")
    return float(np.mean(np.asarray(predicted)[both] == np.asarray(truth)[both]))


def _pick_trees(components: np.ndarray, sizes: np.ndarray, width: int) -> tuple[int, int]:
    """(left tree id, right tree id) among the components (0 where there is none)."""
    candidates = [int(c) for c in np.flatnonzero(sizes >= MIN_TREE_FRACTION * sizes.sum()) if c > 0]
    if len(candidates) == 1:
        lone = candidates[0]
        return (lone, 0) if _top_voxel(components == lone)[2] >= (width - 1) / 2 else (0, lone)
    if not candidates:
        return 0, 0
    columns = {c: np.argwhere(components == c)[:, 2].mean() for c in candidates}
    left = max(candidates, key=lambda c: sizes[c])
    rightward = [c for c in candidates if columns[c] < columns[left]]
    right = max(rightward, key=lambda c: _top_voxel(components == c)[0], default=0)
    return left, right


def _top_voxel(component: np.ndarray) -> np.ndarray:
    """(z, y, x) of the most superior voxel (highest slice; the mean row and column of that slice's voxels)."""
    z = int(np.flatnonzero(component.any(axis=(1, 2)))[-1])
    y, x = np.nonzero(component[z])
    return np.array([z, y.mean(), x.mean()])


def _component_box(components: np.ndarray, label: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """(box, mask of the component inside it)."""
    where = np.argwhere(components == label)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0)))
    return box, components[box] == label


def _tips(mask: np.ndarray) -> np.ndarray:
    """(N, 3) voxels (z, y, x) where the skeleton of `mask` ends (one skeleton neighbour); its top voxel if none."""
    skeleton = skeletonize(mask)
    neighbours = convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") - 1
    tips = np.argwhere(skeleton & (neighbours == 1))
    if len(tips):
        return tips
    where = np.argwhere(mask)
    return where[np.argmax(where[:, 0])][None]


def _width_near(tree: np.ndarray, tip: np.ndarray, spacing: Sequence[float]) -> float:
    """The largest distance to the tree's edge (mm) within OSTIUM_WIDTH_MM of `tip`: the lumen radius there."""
    scale = np.asarray(spacing, np.float64)
    reach = np.ceil(OSTIUM_WIDTH_MM / scale).astype(int)
    box = tuple(slice(max(0, int(t) - r), int(t) + r + 1) for t, r in zip(tip, reach))
    near = tree[box]
    grid = np.stack(np.meshgrid(*(np.arange(b.start, b.start + n) for b, n in zip(box, near.shape)), indexing="ij"), -1)
    within = near & (np.linalg.norm((grid - tip) * scale, axis=-1) <= OSTIUM_WIDTH_MM)
    radius = edt.edt(np.ascontiguousarray(tree[box]), anisotropy=tuple(float(s) for s in spacing), black_border=False)
    return float(radius[within].max()) if within.any() else 0.0


def _left_ostia(tree: np.ndarray, box: tuple[slice, ...], right: np.ndarray | None, spacing: Sequence[float]):
    """(K, 3) (z, y, x) in `tree`'s box: the left tree's tips, the likeliest ostium first (module docstring, step 3).

    right: bool mask of the whole right tree (the full volume), or None."""
    scale = np.asarray(spacing, np.float64)
    left_tips = _tips(tree)
    if right is None:
        return left_tips[np.argsort(-left_tips[:, 0], kind="stable")]
    right_box, right_tree = _component_box(right.astype(np.int32), 1)
    offset = np.array([b.start for b in right_box]) - np.array([b.start for b in box])
    right_tips = _tips(right_tree) + offset
    distance = np.linalg.norm((left_tips[:, None] - right_tips[None]) * scale, axis=2)
    height = (left_tips[:, None, 0] + right_tips[None, :, 0]) * scale[0] / 2
    return left_tips[np.argsort((distance - OSTIUM_HEIGHT_WEIGHT * height).min(axis=1), kind="stable")]


@dataclass(frozen=True)
class _Graph:
    """The voxels of a mask (N, 3) (z, y, x) and their 26-neighbour graph with edge lengths in mm."""

    voxels: np.ndarray
    matrix: csr_matrix

    def distances(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distance mm, predecessor, nearest source) of every node from the nearest of `sources` (node ids)."""
        return dijkstra(self.matrix, directed=False, indices=sources, min_only=True, return_predecessors=True)

    def path(self, predecessors: np.ndarray, end: int) -> list[int]:
        """Node ids from the source to `end` along `predecessors`."""
        nodes = [end]
        while predecessors[nodes[-1]] >= 0:
            nodes.append(int(predecessors[nodes[-1]]))
        return nodes[::-1]


def _voxel_graph(mask: np.ndarray, spacing: Sequence[float]) -> _Graph:
    index = np.full(mask.shape, -1, np.int64)
    voxels = np.argwhere(mask)
    index[tuple(voxels.T)] = np.arange(len(voxels))
    rows, cols, lengths = [], [], []
    for offset in _OFFSETS:
        src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(offset, mask.shape))
        dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(offset, mask.shape))
        a, b = index[src], index[dst]
        linked = (a >= 0) & (b >= 0)
        rows.append(a[linked])
        cols.append(b[linked])
        lengths.append(np.full(int(linked.sum()), float(np.linalg.norm(np.multiply(offset, spacing)))))
    n = len(voxels)
    matrix = csr_matrix((np.concatenate(lengths), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return _Graph(voxels, matrix)


def _label_left_tree(
    tree: np.ndarray, graph: _Graph, ostium: np.ndarray, spacing: Sequence[float]
) -> tuple[float, np.ndarray]:
    """(LM length mm, uint8 map (tree's shape) of LM, LAD, LCX) of one connected left tree seen from `ostium`
    (z, y, x), one of its voxels; graph: the tree's voxel graph."""
    voxels = graph.voxels
    root = int(np.flatnonzero((voxels == np.asarray(ostium)).all(axis=1))[0])
    from_root, to_root, _ = graph.distances(np.array([root]))
    main = graph.path(to_root, int(np.argmax(np.where(np.isfinite(from_root), from_root, -1))))
    other = _other_main_artery(graph, main, from_root, to_root)
    if other is None:  # one path: no bifurcation seen; its first third is the LM
        cut = max(1, len(main) // 3)
        shared, arms, trunk_end = main[:cut], [main[cut:]], main[cut - 1]
    else:
        trunk = 2 * float(edt.edt(tree, anisotropy=tuple(float(s) for s in spacing)).max())
        main_lm, other_lm = _common_start(graph, main, other, trunk), _common_start(graph, other, main, trunk)
        shared = main_lm + other_lm
        arms = [main[len(main_lm) :], other[len(other_lm) :]]
        trunk_end = main_lm[-1] if main_lm else root
    seeds = [shared, *(arm for arm in arms if arm)]
    _, _, nearest = graph.distances(np.concatenate([np.asarray(s, np.int64) for s in seeds]))
    seed_part = np.concatenate([np.full(len(s), k) for k, s in enumerate(seeds)])
    order = np.concatenate([np.asarray(s, np.int64) for s in seeds])
    part_of_node = np.zeros(len(voxels), np.int64)
    part_of_node[order] = seed_part
    part = part_of_node[nearest]
    rows = [voxels[part == k, 1].mean() for k in range(len(seeds))]  # mean row (anterior → posterior) per part
    if len(seeds) == 3:
        arm_labels = [LAD, LCX] if rows[1] <= rows[2] else [LCX, LAD]
    else:  # one arm: the LAD if it runs anterior to the LM, else the LCX
        arm_labels = [LAD if rows[-1] <= rows[0] else LCX][: len(seeds) - 1]
    values = np.array([LM, *arm_labels], np.uint8)
    out = np.zeros(tree.shape, np.uint8)
    out[tuple(voxels.T)] = values[part]
    return float(from_root[trunk_end]), out


def _common_start(graph: _Graph, path: list[int], other: list[int], within_mm: float) -> list[int]:
    """The start of `path` while it stays within `within_mm` of the `other` path, along the mask."""
    from_other, _, _ = graph.distances(np.asarray(other, np.int64))
    return list(takewhile(lambda node: from_other[node] <= within_mm, path))


def _other_main_artery(graph: _Graph, main: list[int], from_root: np.ndarray, to_root: np.ndarray) -> list[int] | None:
    """The root-to-tip path of the branch that is the other main artery, or None when nothing branches off."""
    from_main, _, _ = graph.distances(np.asarray(main, np.int64))
    branch = np.isfinite(from_main) & (from_main > BRANCH_MIN_MM)
    if not branch.any():
        return None
    shape = tuple(int(n) + 1 for n in graph.voxels.max(0))
    volume = np.zeros(shape, bool)
    volume[tuple(graph.voxels[branch].T)] = True
    pieces = cc3d.connected_components(volume, connectivity=26)
    piece_of = pieces[tuple(graph.voxels.T)]
    on_main = set(main)
    candidates = []
    for piece in np.unique(piece_of[branch]):
        nodes = np.flatnonzero(piece_of == piece)
        tip = int(nodes[np.argmax(from_main[nodes])])
        path = graph.path(to_root, tip)
        junction = next((from_root[node] for node in reversed(path) if node in on_main), 0.0)
        candidates.append((float(from_main[tip]), float(junction), path))
    longest = max(length for length, _, _ in candidates)
    long_enough = [c for c in candidates if c[0] >= 0.5 * longest]
    return min(long_enough, key=lambda c: c[1])[2]


def _attach_pieces(out: np.ndarray, components: np.ndarray, trees: list[int], spacing: Sequence[float]) -> None:
    """Give every component but the trees the artery of the nearest labelled voxel within ATTACH_MAX_MM, else other."""
    pieces = [int(c) for c in np.unique(components) if c > 0 and c not in trees]
    if not pieces:
        return
    scale = np.asarray(spacing, np.float64)
    labelled = np.argwhere(out > 0)
    tree = cKDTree(labelled * scale) if len(labelled) else None
    for piece in pieces:
        where = np.argwhere(components == piece)
        if tree is None:
            out[tuple(where.T)] = OTHER_ID
            continue
        distance, index = tree.query(where * scale)
        nearest = int(np.argmin(distance))
        near = distance[nearest] <= ATTACH_MAX_MM
        out[tuple(where.T)] = out[tuple(labelled[index[nearest]])] if near else OTHER_ID
