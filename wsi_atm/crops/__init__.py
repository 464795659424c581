"""The crop engine: square crops at a target µm/px, centred on candidates, streamed in batches.

Planning (:func:`plan_crops`) decides once per slide where crops come from:

- level 0 within ``tolerance`` of the target µm/px, square pixels: read natively, no
  resampling, so a crop equals the slide pixels of its window ``[floor(x + 0.5) - size//2,
  +size)`` (an even window: its centre is the pixel corner nearest the point; an odd read
  window of a resampled plan is centred on the pixel the point lies in, ``floor(x)``; see
  :func:`~wsi_atm.crops.plan.window_origins`);
- non-square pixels (x and y µm/px differ by more than half a pixel over the crop): a
  rectangular window, each side at the target, resized to the square crop;
- finer than the target: the coarsest level still at least as fine as the target (a level
  within tolerance is read natively), then downsampled with an antialiasing Lanczos filter;
- coarser than the target (20× scans at ~0.5 µm/px): upsampled from level 0 with a bicubic
  filter; the plan says so (``upsampled``) and more than ~1.2× raises an
  :class:`UpsamplingWarning`.

Streaming (:func:`stream_crops`) sorts candidates by the tile their window starts in at the
read level (row, then column). Where wsi-atm decodes the level's tiles itself, the crops are
cut tile by tile (:mod:`~wsi_atm.crops.cutting`: each tile decoded once, its pieces copied to
every window it serves); otherwise a thread pool reads crop by crop through the backend, whose
tile cache the neighbouring candidates share. Memory stays bounded (about ``prefetch`` batches
read ahead); batches come out in tile order, and ``CropBatch.indices`` says which input
candidate each crop is. The order, and so every batch, is the same for any worker count.

Modules: :mod:`~wsi_atm.crops.plan` (levels, windows, one crop), :mod:`~wsi_atm.crops.stream`
(batches), :mod:`~wsi_atm.crops.cutting` (the tile-by-tile path).
"""

from wsi_atm.crops.plan import (
    DEFAULT_MPP,
    DEFAULT_SIZE,
    DEFAULT_TILE,
    DEFAULT_TOLERANCE,
    UPSAMPLE_WARN,
    CropBatch,
    CropPlan,
    UpsamplingWarning,
    nearest_pixel,
    plan_crops,
    read_crop,
    tile_order,
)
from wsi_atm.crops.stream import default_workers, stream_crops

__all__ = [
    "DEFAULT_MPP", "DEFAULT_SIZE", "DEFAULT_TILE", "DEFAULT_TOLERANCE", "UPSAMPLE_WARN",
    "CropBatch", "CropPlan", "UpsamplingWarning", "default_workers", "nearest_pixel",
    "plan_crops", "read_crop", "stream_crops", "tile_order",
]
