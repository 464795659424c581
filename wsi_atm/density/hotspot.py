"""The mitotic hotspot: the circular field of a fixed area holding the most mitoses.

Exact, not a grid search. Some optimal disk has a mitosis on its boundary (slide any optimal
disk until one touches it), so for each mitosis ``p`` taken as a boundary point the centre
runs round the circle of radius ``r`` about ``p``; every other mitosis ``q`` within ``2r`` is
inside for one arc of centre angles, and an angular sweep over those arcs finds the best
centre on that circle. Disks are closed (a mitosis on the rim counts). The best disk is the
one with the most mitoses and, among those, the most atypical ones.

Few pivots need a sweep. Binned on a fine grid, the points give for every cell an upper bound
on any disk centred in it (one FFT); a few exact disks give a lower bound; only cells whose
bound beats it can hold a better centre, and only points whose circle of centres crosses such
a cell are swept, best bound first, until no bound beats the best disk found.

Coordinates are µm (pixels times each axis' µm/px), so the field is a true circle on the glass
even when pixels are not square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

TWO_PI = 2.0 * math.pi
ARC_SLACK = 1e-10  # radians
REL_TOL = 1e-9  # of the radius: rounding never moves a point out of a bound
MAX_GRID_CELLS = 1500  # cells along the longer side of the bounding grid
GRID_FINENESS = 64  # cells per radius, where the slide is small enough
LOWER_PROBES = 256  # cell centres whose disks are counted exactly for a first lower bound
MAX_LIVE_CELLS = 10_000  # beyond these the points are spread evenly: no exact search
MAX_SWEEPS = 5_000  # pivots swept at most; the answer then carries its ceiling
RING_CHUNK = 256  # live cells per batched neighbour query (bounds its index arrays)
CROWD_SWEEPS = 200  # pivots swept for a good field when no exact search is attempted


@dataclass(frozen=True)
class Hotspot:
    """The densest field: its centre in µm, its counts and which points it holds."""

    center_um: tuple[float, float]
    radius_um: float
    mitoses: int
    atypical: int
    members: np.ndarray  # bool per input point: inside the field (closed disk)
    mitoses_bound: int  # no field holds more; equals ``mitoses`` when the search was exact
    exact: bool  # proven best (mitoses, then atypical); else the best found, with the bound

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


@dataclass(frozen=True)
class _Grid:
    """Weights binned on square cells ``s`` µm wide; ``reach`` per cell bounds what any disk
    centred in that cell holds."""

    s: float
    x0: float
    y0: float
    reach: np.ndarray  # (rows, cols) int64 weights

    def cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) of the cell each point lies in."""
        return (((y - self.y0) / self.s).astype(np.int64),
                ((x - self.x0) / self.s).astype(np.int64))

    def centres(self, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        return np.column_stack([self.x0 + (ix + 0.5) * self.s, self.y0 + (iy + 0.5) * self.s])


def _grid(x: np.ndarray, y: np.ndarray, aty: np.ndarray, r: float) -> _Grid:
    """Sum the weights of every cell whose nearest distance to a cell C is at most ``r``: no
    disk centred in C reaches further, so the sum bounds it. Cells of r/64 overestimate a disk
    by ~4.5 %, which is what lets a near-uniform spread of 50,000 points be pruned."""
    extent = max(float(np.ptp(x)), float(np.ptp(y)), r)
    s = max(r / GRID_FINENESS, extent / MAX_GRID_CELLS)
    m = math.ceil(r / s) + 1  # margin: centres may lie off the points' bounding box
    x0, y0 = float(x.min()) - m * s, float(y.min()) - m * s
    ix = ((x - x0) / s).astype(np.int64)
    iy = ((y - y0) / s).astype(np.int64)
    shape = (int(iy.max()) + m + 1, int(ix.max()) + m + 1)
    k = np.arange(-m, m + 1)
    gap = np.maximum(np.abs(k) - 1, 0) * s
    stencil = (np.hypot(gap[:, None], gap[None, :]) <= r * (1 + REL_TOL)).astype(np.float64)

    def reach_of(select: np.ndarray) -> np.ndarray:
        # Counts, not weights, go through the FFT: its rounding error grows with the sums, and
        # counts (at most n) stay far below 0.5 of error where weights (~n²) would not.
        grid = np.zeros(shape, dtype=np.float64)
        np.add.at(grid, (iy[select], ix[select]), 1.0)
        # symmetric odd stencil: convolution = correlation
        counts: np.ndarray = np.rint(_convolve_same(grid, stencil)).astype(np.int64)
        return counts

    n = len(x)
    reach = reach_of(np.ones(n, dtype=bool)) * (n + 1) + reach_of(aty)
    return _Grid(s, x0, y0, reach)


def _convolve_same(grid: np.ndarray, stencil: np.ndarray) -> np.ndarray:
    """``grid`` convolved with an odd-sized ``stencil``, cropped to ``grid``'s shape and
    centred (what ``scipy.signal.fftconvolve(..., mode="same")`` gives) through ``scipy.fft``
    directly: importing scipy.signal costs ~0.7 s on every run, scipy.fft ~0.03 s."""
    from scipy import fft

    (gh, gw), (kh, kw) = grid.shape, stencil.shape
    shape = (fft.next_fast_len(gh + kh - 1, real=True), fft.next_fast_len(gw + kw - 1, real=True))
    full: np.ndarray = fft.irfft2(fft.rfft2(grid, shape) * fft.rfft2(stencil, shape), shape)
    return full[(kh - 1) // 2 : (kh - 1) // 2 + gh, (kw - 1) // 2 : (kw - 1) // 2 + gw]


def _disk_weights(centres: np.ndarray, tree: cKDTree, aty_tree: cKDTree | None, r: float,
                  n: int) -> np.ndarray:
    """Exact weight (mitoses × (n + 1) + atypical) of the closed disk about each centre."""
    near = np.asarray(tree.query_ball_point(centres, r, return_length=True), dtype=np.int64)
    near_aty = np.zeros(len(centres), dtype=np.int64)
    if aty_tree is not None:
        near_aty = np.asarray(aty_tree.query_ball_point(centres, r, return_length=True),
                              dtype=np.int64)
    out: np.ndarray = near * (n + 1) + near_aty
    return out


def _ring_bound(pts: np.ndarray, tree: cKDTree, grid: _Grid, live: np.ndarray,
                r: float) -> np.ndarray:
    """Per pivot: the best ``reach`` among the live cells its circle of centres (radius r)
    passes through; 0 where it passes through none."""
    bound = np.zeros(len(pts), dtype=np.float64)
    iy, ix = np.nonzero(live)
    half_diag = grid.s * math.sqrt(0.5)
    for start in range(0, len(iy), RING_CHUNK):
        cy, cx = iy[start : start + RING_CHUNK], ix[start : start + RING_CHUNK]
        centres = grid.centres(cy, cx)
        lists = tree.query_ball_point(centres, (r + half_diag) * (1 + REL_TOL))
        lengths = np.array([len(v) for v in lists], dtype=np.int64)
        if not lengths.sum():
            continue
        idx = np.concatenate([np.asarray(v, dtype=np.int64) for v in lists])
        owner = np.repeat(np.arange(len(centres)), lengths)
        d = np.hypot(*(pts[idx] - centres[owner]).T)
        on_ring = d >= (r - half_diag) * (1 - REL_TOL)
        np.maximum.at(bound, idx[on_ring], grid.reach[cy, cx][owner[on_ring]])
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
    aty_tree = cKDTree(pts[aty]) if aty.any() else None
    grid = _grid(x, y, aty, r)
    # A lower bound from real disks: the centres of the cells that could hold the most.
    top = np.argsort(grid.reach, axis=None)[-LOWER_PROBES:]
    probes = grid.centres(*np.unravel_index(top, grid.reach.shape))
    held = _disk_weights(probes, tree, aty_tree, r, n)
    best = int(held.max())
    best_center = (float(probes[held.argmax(), 0]), float(probes[held.argmax(), 1]))
    # Only a disk centred in a cell whose reach beats that can do better, and sliding it until
    # a point meets its rim keeps its centre in such a cell: sweep the points whose circle of
    # centres crosses one, best bound first. On a near-uniform crowd of points (tens of
    # thousands spread evenly: no real hotspot) that is most of the slide; the search then
    # stops and reports the best field found with a proven ceiling instead of taking minutes.
    live = grid.reach > best
    if int(live.sum()) <= MAX_LIVE_CELLS:
        upper = _ring_bound(pts, tree, grid, live, r)
    else:  # no proof in reach: sweep the points in the densest cells for a good field
        upper = grid.reach[grid.cells(x, y)]
        upper[np.argsort(-upper, kind="stable")[CROWD_SWEEPS:]] = 0
    ceiling = int(grid.reach.max()) if int(live.sum()) > MAX_LIVE_CELLS else best
    order = np.argsort(-upper, kind="stable")[:MAX_SWEEPS + 1]
    for sweeps, i in enumerate(order):
        if upper[i] <= best:
            break  # no later pivot can do better: bounds only fall from here
        if sweeps == MAX_SWEEPS:
            ceiling = max(ceiling, int(upper[i]))
            break
        value, center = _pivot(i, x, y, weight, tree, r)
        if value > best:
            best, best_center = value, center
    # Membership with a relative tolerance: the sweep places rim points exactly on the rim.
    members = np.hypot(x - best_center[0], y - best_center[1]) <= r * (1 + 1e-9)
    cx, cy = _centred(x, y, members, best_center, r)
    members = np.hypot(x - cx, y - cy) <= r * (1 + 1e-9)
    mitoses = int(members.sum())
    # exact only if nothing may beat the field found, atypical tie-break included
    exact = ceiling <= best
    bound = mitoses if exact else max(mitoses, max(ceiling, best) // (n + 1))
    return Hotspot(center_um=(float(cx), float(cy)), radius_um=r, mitoses=mitoses,
                   atypical=int((members & aty).sum()), members=members, mitoses_bound=bound,
                   exact=exact)


def _centred(x: np.ndarray, y: np.ndarray, members: np.ndarray, centre: tuple[float, float],
             r: float) -> tuple[float, float]:
    """A centre for the field among its mitoses, holding every one of ``members``.

    The best field is rarely unique: the search returns a centre with a mitosis on the rim, or
    for a few mitoses any centre within ``r`` of them (one mitosis: a centre ``r`` away, off
    the slide). The members' centroid, else their bounding box's centre, else the centre of
    their smallest enclosing circle (inside their convex hull; its radius is at most ``r``, as
    they fit in a field), where that disk still holds them all (so it holds at least as many:
    no fewer counts), else ``centre``."""
    px, py = x[members], y[members]
    for c in ((float(px.mean()), float(py.mean())),
              (float(px.min() + px.max()) / 2, float(py.min() + py.max()) / 2),
              _enclosing_centre(px, py)):
        if bool(np.all(np.hypot(px - c[0], py - c[1]) <= r * (1 + 1e-9))):
            return c
    return centre


def _enclosing_centre(px: np.ndarray, py: np.ndarray) -> tuple[float, float]:
    """Centre of the smallest circle holding every point (Welzl's incremental form, points in
    a fixed shuffled order: expected linear time, the same answer on every run)."""
    order = np.random.default_rng(0).permutation(len(px))
    pts = [(float(px[k]), float(py[k])) for k in order]
    c, rr = pts[0], 0.0
    for i, p in enumerate(pts):
        if _holds(c, rr, p):
            continue
        c, rr = p, 0.0
        for j in range(i):
            q = pts[j]
            if _holds(c, rr, q):
                continue
            c = ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)
            rr = math.dist(c, p)
            for k in range(j):
                if not _holds(c, rr, pts[k]):
                    c = _circumcentre(p, q, pts[k])
                    rr = max(math.dist(c, v) for v in (p, q, pts[k]))
    return c


def _holds(c: tuple[float, float], rr: float, p: tuple[float, float]) -> bool:
    return math.dist(c, p) <= rr * (1 + 1e-12) + 1e-9


def _circumcentre(a: tuple[float, float], b: tuple[float, float],
                  c: tuple[float, float]) -> tuple[float, float]:
    """Centre of the circle through three points; for (nearly) collinear ones, the midpoint of
    the farthest pair (the smallest circle holding all three)."""
    bx, by, cx, cy = b[0] - a[0], b[1] - a[1], c[0] - a[0], c[1] - a[1]
    d = 2.0 * (bx * cy - by * cx)
    if abs(d) <= 1e-12 * max(bx * bx + by * by, cx * cx + cy * cy):
        u, v = max(((a, b), (a, c), (b, c)), key=lambda e: math.dist(*e))
        return (u[0] + v[0]) / 2, (u[1] + v[1]) / 2
    b2, c2 = bx * bx + by * by, cx * cx + cy * cy
    return a[0] + (cy * b2 - by * c2) / d, a[1] + (bx * c2 - cx * b2) / d


def _pivot(i: int, x: np.ndarray, y: np.ndarray, weight: np.ndarray, tree: cKDTree,
           r: float) -> tuple[int, tuple[float, float]]:
    """The best disk with point ``i`` on its rim: its weight and centre."""
    pts_i = (float(x[i]), float(y[i]))
    near = np.asarray(tree.query_ball_point(pts_i, 2.0 * r), dtype=np.int64)
    near = near[near != i]
    dx, dy = x[near] - pts_i[0], y[near] - pts_i[1]
    d = np.hypot(dx, dy)
    same = d <= 1e-9 * r  # coincident points are inside wherever the centre is
    value, angle = _sweep(d[~same], np.arctan2(dy[~same], dx[~same]), weight[near][~same], r)
    value += int(weight[i] + weight[near][same].sum())
    return value, (pts_i[0] + r * math.cos(angle), pts_i[1] + r * math.sin(angle))
