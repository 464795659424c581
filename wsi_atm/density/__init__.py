"""Where the mitoses are: the mitotic hotspot (densest field of a fixed area) and tissue area."""

from wsi_atm.density.hotspot import Hotspot, find_hotspot, hotspot_radius_um
from wsi_atm.density.tissue import Tissue, tissue_area

__all__ = ["Hotspot", "Tissue", "find_hotspot", "hotspot_radius_um", "tissue_area"]
