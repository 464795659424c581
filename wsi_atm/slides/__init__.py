"""Slide reading: ``open_slide(path, backend, mpp) → Slide`` over OpenSlide or tiffslide.

- :mod:`~wsi_atm.slides.slide`: the :class:`Slide` interface and :func:`open_slide`;
- :mod:`~wsi_atm.slides.mpp`: the µm/px chain and its provenance (x and y apart);
- :mod:`~wsi_atm.slides.backends`: the OpenSlide and tiffslide adapters;
- :mod:`~wsi_atm.slides.tiles`: wsi-atm's own decoder for tiled TIFF levels.
"""

from wsi_atm.options import MPP_RANGE
from wsi_atm.slides.mpp import Mpp
from wsi_atm.slides.slide import BACKENDS, Slide, open_slide

__all__ = ["BACKENDS", "MPP_RANGE", "Mpp", "Slide", "open_slide"]
