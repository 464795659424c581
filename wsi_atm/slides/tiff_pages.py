"""Which pages of a TIFF-family slide wsi-atm decodes itself (:func:`find_levels`), and what
their tiles' decoder needs (:class:`Level`). Everything else stays with OpenSlide/tiffslide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsi_atm.slides.jpeg import JpegTiles

# none, LZW, JPEG, deflate (Adobe and old), Aperio JPEG 2000 (RGB), JPEG 2000. Aperio's
# YCbCr JPEG 2000 (33003) is left to OpenSlide, which converts it explicitly.
SUPPORTED_COMPRESSION = frozenset({1, 5, 7, 8, 32946, 33005, 34712})


@dataclass(frozen=True)
class Level:
    """A slide level held one-to-one by a tiled TIFF page, and how to decode its tiles."""

    page: Any  # tifffile.TiffPage (tifffile is untyped here)
    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    # 8-bit RGB JPEG tiles: decoded strictly, straight from the reader (tifffile's generic
    # decode path costs ~25 % more per tile and passes damaged data); else None
    jpeg: JpegTiles | None = None
    jpegtables: bytes | None = None  # read once: tifffile's page attribute is not free


def _colour_ok(page: Any) -> bool:
    """Layouts decoded to the right RGB: grey; RGB; RGB + unassociated alpha; YCbCr only inside
    JPEG (libjpeg converts it; tifffile would hand other YCbCr tiles back raw)."""
    photometric, samples = int(page.photometric), int(page.samplesperpixel)
    extra = tuple(int(v) for v in (page.extrasamples or ()))
    if photometric == 1:
        return samples == 1
    if photometric == 6:
        return int(page.compression) == 7 and samples == 3
    if photometric == 2:
        return (samples, extra) in ((3, ()), (4, (2,)))
    return False


def usable(page: Any) -> bool:
    return bool(
        page.is_tiled and page.planarconfig == 1 and page.bitspersample == 8
        and int(page.compression) in SUPPORTED_COMPRESSION and _colour_ok(page)
        and getattr(page, "imagedepth", 1) == 1)


def _level(page: Any) -> Level:
    from tifffile.tifffile import jpeg_decode_colorspace

    jpeg = None
    shape = (int(page.tilelength), int(page.tilewidth), 3)
    if int(page.compression) == 7 and page.samplesperpixel == 3 and not page.extrasamples:
        # tifffile's reading of the tags: JCS_RGB (2) where the file codes R, G and B
        colorspace, _ = jpeg_decode_colorspace(page.photometric, page.planarconfig,
                                               page.extrasamples, page.is_jfif)
        jpeg = JpegTiles.for_page(page.jpegtables, colorspace == 2, shape)
    return Level(page, int(page.imagewidth), int(page.imagelength), int(page.tilewidth),
                  int(page.tilelength), -(-int(page.imagewidth) // int(page.tilewidth)),
                  tuple(int(v) for v in page.dataoffsets),
                  tuple(int(v) for v in page.databytecounts), jpeg, page.jpegtables)


def find_levels(tif: Any, level_dimensions: tuple[tuple[int, int], ...]) -> dict[int, Level]:
    """Each slide level that a tiled page holds exactly, by size: pages of the main IFD chain
    and the reduced levels a series keeps in SubIFDs (OME-TIFF).

    A level is taken only when exactly one usable tiled page has its size, so an associated
    image or a second series of the same size never stands in for it.
    """
    pages = [p for p in _pages(tif) if getattr(p, "is_tiled", False)]
    found: dict[int, Level] = {}
    for level, (w, h) in enumerate(level_dimensions):
        same = [p for p in pages if (int(p.imagewidth), int(p.imagelength)) == (w, h)]
        if len(same) == 1 and usable(same[0]):
            found[level] = _level(same[0])
            if not _strict_decoder_reads(found[level]):  # OpenSlide decodes it, as strictly
                del found[level]
    return found


def _strict_decoder_reads(level: Level) -> bool:
    """Whether the strict JPEG decoder takes the level's tiles, judged on the first one the
    file holds (a JPEG layout TurboJPEG refuses, which OpenSlide reads, is left to OpenSlide
    rather than refused as damage)."""
    if level.jpeg is None:
        return True
    first = next((i for i, n in enumerate(level.counts) if n), None)
    if first is None:
        return True
    fh = level.page.parent.filehandle
    fh.seek(level.offsets[first])
    return level.jpeg.turbojpeg_reads(fh.read(min(level.counts[first], 1 << 16)))


def _pages(tif: Any) -> list[Any]:
    """The main chain's pages, then each series level's first page not already among them."""
    pages = list(tif.pages)
    seen = {int(p.offset) for p in pages}
    try:
        levels = [level.keyframe for series in tif.series for level in series.levels[1:]]
    except Exception:  # a series tifffile cannot make sense of: its SubIFD levels stay with
        return pages  # the library that opened the slide
    for page in levels:
        if int(page.offset) not in seen:
            seen.add(int(page.offset))
            pages.append(page)
    return pages


@dataclass(frozen=True)
class PageFacts:
    """What a library's pixels of a TIFF level lack: its tiles the file never wrote (byte
    count 0: transparent, so white) and whether it stores grey as white-is-zero."""

    tile_w: int
    tile_h: int
    across: int
    missing: frozenset[int]
    min_is_white: bool
    colormap: Any = None  # a palette level's 3×2**bits uint16 map (tiffslide ignores it)
    # Aperio YCbCr JPEG 2000 (33003): tiffslide hands back its Y, Cb and Cr as R, G and B
    ycbcr_jp2k: bool = False
    # associated alpha (ExtraSamples 1): the colour is premultiplied, tiffslide hands it back so
    premultiplied: bool = False


def page_facts(path: Any, level_dimensions: tuple[tuple[int, int], ...]) -> dict[int, PageFacts]:
    """:class:`PageFacts` of each level one page of the file holds exactly (none when the file
    is not a TIFF tifffile reads)."""
    import tifffile

    found: dict[int, PageFacts] = {}
    try:
        with tifffile.TiffFile(path) as tif:
            pages = _pages(tif)
            for level, (w, h) in enumerate(level_dimensions):
                same = [p for p in pages if (int(p.imagewidth), int(p.imagelength)) == (w, h)]
                if len(same) != 1:
                    continue
                page = same[0]
                tiled = bool(page.is_tiled)
                tile_w = int(page.tilewidth) if tiled else w
                tile_h = int(page.tilelength) if tiled else int(page.rowsperstrip or h)
                missing = frozenset(i for i, n in enumerate(page.databytecounts) if not n)
                colormap = page.colormap if int(page.photometric) == 3 else None
                extra = tuple(int(v) for v in (page.extrasamples or ()))
                found[level] = PageFacts(tile_w, tile_h, -(-w // tile_w), missing,
                                         int(page.photometric) == 0, colormap,
                                         int(page.compression) == 33003, extra[:1] == (1,))
    except Exception:  # not a TIFF, or one tifffile cannot read: the library's pixels stand
        return {}
    return found
