"""The mitotic hotspot: the circular field of a fixed area holding the most mitoses.

Exact, not a grid search. Some optimal disk has a mitosis on its boundary (slide any optimal
disk until one touches it), so for each mitosis ``p`` taken as a boundary point the centre
runs round the circle of radius ``r`` about ``p``; every other mitosis ``q`` within ``2r`` is
inside for one arc of centre angles, and an angular sweep over those arcs finds the best
centre on that circle. Disks are closed (a mitosis on the rim counts). The best disk is the
one with the most mitoses and, among those, the most atypical ones. Pivots are visited in
decreasing order of an upper bound (mitoses within ``2r``), so a typical slide sweeps few.

Coordinates are µm (pixels times each axis' µm/px), so the field is a true circle on the glass
even when pixels are not square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

TWO_PI = 2.0 * math.pi
ARC_SLACK = 1e-10  # radians
MAX_GRID_CELLS = 2000  # cells along the longer side of the bounding grid


@dataclass(frozen=True)
class Hotspot:
    """The densest field: its centre in µm, its counts and which points it holds."""

    center_um: tuple[float, float]
    radius_um: float
    mitoses: int
    atypical: int
    members: np.ndarray  # bool per input point: inside the field (closed disk)

    @property
    def area_mm2(self) -> float:
        return math.pi * self.radius_um**2 / 1e6

    @property
    def atypical_fraction(self) -> float | None:
        return self.atypical / self.mitoses if self.mitoses else None


def hotspot_radius_um(area_mm2: float) -> float:
    if not (math.isfinite(area_mm2) and area_mm2 > 0):
        raise ValueError(f"hotspot area must be a positive number of mm², got {area_mm2!r}")
    return math.sqrt(area_mm2 * 1e6 / math.pi)


def _sweep(d: np.ndarray, theta: np.ndarray, w: np.ndarray, r: float) -> tuple[int, float]:
    """Best total weight of arcs covering one centre angle, and that angle.

    Arc ``k`` is ``[theta_k - phi_k, theta_k + phi_k]`` with ``cos(phi_k) = d_k / 2r``.
    """
    if len(d) == 0:
        return 0, 0.0
    # Widened by ARC_SLACK: arcs that meet at one angle (points exactly on one circle) must
    # still overlap after rounding; a point this admits lies within ~1e-10 r of the rim.
    phi = np.arccos(np.clip(d / (2.0 * r), -1.0, 1.0)) + ARC_SLACK
    start = np.mod(theta - phi, TWO_PI)
    end = np.mod(theta + phi, TWO_PI)
    wrapped = start > end  # the arc covers angle 0
    base = int(w[wrapped].sum())
    angles = np.concatenate([start, end])
    deltas = np.concatenate([w, -w])
    # At equal angles, arcs open before others close: closed arcs touching at one angle overlap.
    order = np.lexsort((-deltas, angles))
    running = base + np.cumsum(deltas[order])
    k = int(np.argmax(running))
    if running[k] <= base:
        return base, 0.0
    return int(running[k]), float(angles[order][k])


def _neighbour_bound(pts: np.ndarray, tree: cKDTree, aty: np.ndarray, r: float,
                     n: int) -> np.ndarray:
    """Per pivot: the weight of every point within ``2r`` (a disk with the pivot on its rim
    lies inside that circle)."""
    near = np.asarray(tree.query_ball_point(pts, 2.0 * r, return_length=True), dtype=np.int64)
    near_aty = np.zeros(len(pts), dtype=np.int64)
    if aty.any():
        aty_tree = cKDTree(pts[aty])
        near_aty = np.asarray(aty_tree.query_ball_point(pts, 2.0 * r, return_length=True),
                              dtype=np.int64)
    return near * (n + 1) + near_aty


def _grid_bound(x: np.ndarray, y: np.ndarray, weight: np.ndarray, r: float) -> np.ndarray:
    """Per pivot: an upper bound on what any disk with the pivot on its rim holds, ~1.4x the
    disk's area instead of 4x, so that sparse background pivots are never swept.

    Weights are summed on a grid of cells ``s`` wide. A disk centred anywhere in cell C can
    only reach cells whose nearest distance to C is at most ``r`` (the stencil), so their sum
    bounds every disk centred in C; a pivot's disk centres lie in cells within the same
    stencil of the pivot's cell, so the maximum of those sums bounds the pivot.
    """
    extent = max(float(np.ptp(x)), float(np.ptp(y)), r)
    s = max(r / 8.0, extent / MAX_GRID_CELLS)
    m = math.ceil(r / s) + 1  # margin: centres may lie off the points' bounding box
    ix = ((x - x.min()) / s).astype(np.int64) + m
    iy = ((y - y.min()) / s).astype(np.int64) + m
    grid = np.zeros((int(iy.max()) + m + 1, int(ix.max()) + m + 1), dtype=np.float64)
    np.add.at(grid, (iy, ix), weight.astype(np.float64))
    k = np.arange(-m, m + 1)
    gap = np.maximum(np.abs(k) - 1, 0) * s
    stencil = np.hypot(gap[:, None], gap[None, :]) <= r
    reach = ndimage.correlate(grid, stencil.astype(np.float64), mode="constant", cval=0.0)
    best_near = ndimage.maximum_filter(reach, footprint=stencil, mode="constant", cval=0.0)
    # float sums of integers below 2**53 are exact; round guards the conversion anyway
    bound: np.ndarray = np.rint(best_near[iy, ix]).astype(np.int64)
    return bound


def find_hotspot(
    x_um: np.ndarray, y_um: np.ndarray, atypical: np.ndarray, radius_um: float
) -> Hotspot | None:
    """The closed disk of ``radius_um`` holding the most points (then the most atypical ones).

    ``None`` when there are no points.
    """
    x = np.asarray(x_um, dtype=np.float64)
    y = np.asarray(y_um, dtype=np.float64)
    aty = np.asarray(atypical, dtype=bool)
    n, r = len(x), float(radius_um)
    if n == 0:
        return None
    # One integer per point: mitoses first, atypical ones break ties (n + 1 > any atypical sum).
    weight = np.where(aty, n + 2, n + 1).astype(np.int64)
    pts = np.column_stack([x, y])
    tree = cKDTree(pts)
    upper = np.minimum(_grid_bound(x, y, weight, r), _neighbour_bound(pts, tree, aty, r, n))
    best, best_center = -1, (x[0] + r, y[0])
    for i in np.argsort(-upper, kind="stable"):
        if upper[i] <= best:
            break  # no later pivot can do better: bounds only fall from here
        near = np.asarray(tree.query_ball_point(pts[i], 2.0 * r), dtype=np.int64)
        near = near[near != i]
        dx, dy = x[near] - x[i], y[near] - y[i]
        d = np.hypot(dx, dy)
        same = d <= 1e-9 * r  # coincident points are inside wherever the centre is
        value, angle = _sweep(d[~same], np.arctan2(dy[~same], dx[~same]), weight[near][~same], r)
        value += int(weight[i] + weight[near][same].sum())
        if value > best:
            best = value
            best_center = (x[i] + r * math.cos(angle), y[i] + r * math.sin(angle))
    cx, cy = best_center
    # Membership with a relative tolerance: the sweep places rim points exactly on the rim.
    members = np.hypot(x - cx, y - cy) <= r * (1 + 1e-9)
    return Hotspot(center_um=(float(cx), float(cy)), radius_um=r,
                   mitoses=int(members.sum()), atypical=int((members & aty).sum()),
                   members=members)
