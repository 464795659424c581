"""8-bit RGB JPEG tiles of TIFF-family slides, decoded by libjpeg-turbo as strictly as
OpenSlide decodes them.

A TIFF's JPEG tiles are usually abbreviated streams: the quantisation and Huffman tables sit
once in the page's JPEGTables tag, and the colour space is the TIFF's, not the stream's
(Aperio writes RGB-coded JPEG that libjpeg would otherwise take for YCbCr). :class:`JpegTiles`
makes each tile a complete stream (start marker, an Adobe marker saying RGB where the file
codes RGB, the tables, the tile's own bytes) and decodes it with simplejpeg, whose strict mode
turns libjpeg's "corrupt data" warnings into errors. imagecodecs drops those warnings: a tile
with damaged entropy-coded data (flipped bits, a zeroed block) decoded without a word, part of
it grey, where OpenSlide refuses the same tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_atm.errors import SlideError

SOI, EOI = b"\xff\xd8", b"\xff\xd9"
# APP14 "Adobe", version 100, no flags, transform 0: the three components are R, G and B
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
# APP0 (JFIF) and APP14 (Adobe): libjpeg takes the colour space from them (a JFIF marker
# outranks an Adobe one; of several Adobe markers the last counts), so where the file codes RGB
# they are dropped and only ours speaks (OpenSlide sets the colour space from the TIFF)
COLOUR_MARKERS = (0xE0, 0xEE)


def _table_segments(tables: bytes) -> list[bytes] | None:
    """The marker segments of a tables-only stream, between its start and end markers (what
    follows the end marker is not read, as libjpeg does not read it); None where it is not
    laid out so."""
    if not tables.startswith(SOI):
        return None
    found: list[bytes] = []
    at = 2
    while at + 2 <= len(tables):
        if tables[at] != 0xFF:
            return None
        marker = tables[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:
            return found
        if at + 4 > len(tables):
            return None
        end = at + 2 + int.from_bytes(tables[at + 2 : at + 4], "big")
        found.append(tables[at:end])
        at = end
    return None


class DamagedTile(ValueError):
    """libjpeg-turbo stopped on, or warned about, the tile's data (the message is libjpeg's)."""


class OtherSizeTile(ValueError):
    """The tile's stream holds an image of another size than the file declares."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"{width}x{height}")
        self.width, self.height = width, height


@dataclass(frozen=True)
class JpegTiles:
    """How one level's JPEG tiles become complete streams, and their decode."""

    head: bytes  # put in place of a tile's own start marker; empty: the tile is complete
    shape: tuple[int, int, int]  # tile_h, tile_w, 3
    rgb: bool = False  # the file codes R, G and B (said by an Adobe marker in ``head``)

    @classmethod
    def for_page(cls, tables: bytes | None, rgb: bool, shape: tuple[int, int, int]) -> JpegTiles:
        """``tables``: the JPEGTables tag (a stream of tables only); ``rgb``: the file says
        its JPEG codes R, G and B, not YCbCr."""
        inner = tables or b""
        segments = _table_segments(inner)
        if segments is None:  # not laid out as tables: spliced as they are, libjpeg judges
            if inner.startswith(SOI):
                inner = inner[2:]
            if inner.endswith(EOI):
                inner = inner[:-2]
        else:
            inner = b"".join(s for s in segments
                             if not (rgb and s[1] in COLOUR_MARKERS))
        extra = (ADOBE_RGB if rgb else b"") + inner
        return cls(SOI + extra if extra else b"", shape, rgb)

    def stream(self, blob: bytes | memoryview) -> bytes | memoryview:
        """The tile as a complete JPEG stream (the tile's bytes unchanged where they are one,
        or where they do not start as JPEG: libjpeg then says what is wrong). Where the file
        codes RGB, JFIF and Adobe markers leading the tile are left out (see
        :data:`COLOUR_MARKERS`)."""
        if not self.head or bytes(blob[:2]) != SOI:
            return blob
        view = memoryview(blob)
        start = 2
        if self.rgb:
            while (len(view) >= start + 4 and view[start] == 0xFF
                   and view[start + 1] in COLOUR_MARKERS):
                start += 2 + (view[start + 2] << 8 | view[start + 3])
        return b"".join((self.head, view[start:]))

    def decode(self, blob: bytes | memoryview, out: np.ndarray | None = None) -> np.ndarray:
        """The tile as RGB, into ``out`` (of :attr:`shape`) where given. Raises
        :class:`DamagedTile` or :class:`OtherSizeTile`."""
        stream = self.stream(blob)
        try:
            tile = _decode(stream, out)
        except DamagedTile as exc:
            if out is None or "too small to decode" not in str(exc):
                raise
            tile = _decode(stream, None)  # larger than declared: only to say how large
        if tile.shape != self.shape:
            raise OtherSizeTile(tile.shape[1], tile.shape[0])
        return tile

    def turbojpeg_reads(self, blob: bytes | memoryview) -> bool:
        """False where libjpeg-turbo's TurboJPEG interface (simplejpeg's) cannot take a tile
        of this layout at all: chroma subsampling other than its standard ones (say luma 2x2,
        Cb 2x1, Cr 1x1), which libjpeg itself, and so OpenSlide, decode. Damaged data says
        True here: its decode refuses it."""
        import simplejpeg

        try:
            simplejpeg.decode_jpeg_header(self.stream(blob))
        except ValueError as exc:
            return "subsampling" not in str(exc)
        return True

def _decode(stream: bytes | memoryview, out: np.ndarray | None) -> np.ndarray:
    import simplejpeg

    try:
        tile: np.ndarray = simplejpeg.decode_jpeg(stream, colorspace="RGB", buffer=out,
                                                  strict=True)
    except ValueError as exc:
        raise DamagedTile(str(exc)) from None
    return tile


def check_jpeg_end(blob: bytes | memoryview, path: Path, level: int, index: int) -> None:
    """A ``SlideError`` unless a JPEG tile's bytes end with the end-of-image marker (trailing
    zero padding allowed). Looked at once libjpeg has refused a tile, for the plainer message:
    a copy cut short is the commonest damage, and libjpeg's own words for it ("premature
    end") name no cause."""
    if not bytes(blob).rstrip(b"\0").endswith(EOI):
        raise SlideError(f"{path.name}: tile {index} of level {level} is cut short (its JPEG "
                         "data has no end marker): the slide file is damaged or incompletely "
                         "copied")
