"""Mitosis-detector output → candidates in level-0 pixels of the slide (OpenSlide's frame).

One reader per format, chosen from the file's content (never its extension):

- ``midog-json``: MIDOG++ / MIDOG 2021 COCO-like JSON (bbox [x1, y1, x2, y2] px, many images)
- ``gc-points``: grand-challenge "Multiple points" JSON (mm; also "Mulitple points")
- ``sliderunner-sqlite``: SlideRunner SQLite databases (many slides, classes by name)
- ``csv``: CSV/TSV with x/y columns (pixels unless told otherwise; QuPath's measurement export,
  ``Centroid X µm``, is in QuPath's frame like its GeoJSON)
- ``qupath-geojson``: QuPath GeoJSON (QuPath's frame: ``bounds_offset`` is added)

A zero-byte (or blank) file is format ``"empty"``: zero candidates, not an error.
"""

from __future__ import annotations

from wsi_atm.detections.images import ImageInfo
from wsi_atm.detections.postprocess import merge_duplicates
from wsi_atm.detections.read import detect_format, list_images, read_detections
from wsi_atm.detections.records import (
    SUPPORTED_FORMATS,
    CandidateOptions,
    Candidates,
    ReadReport,
    SlideFrame,
)

__all__ = [
    "SUPPORTED_FORMATS",
    "CandidateOptions",
    "Candidates",
    "ImageInfo",
    "ReadReport",
    "SlideFrame",
    "detect_format",
    "list_images",
    "merge_duplicates",
    "read_detections",
]
