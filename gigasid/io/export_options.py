"""What an export may be asked for: format names and limits, :class:`ExportOptions`, the error.

Every request is checked here before any pixel is read (see :func:`gigasid.io.export.export_all`),
so a bad option or an image too large for a plain format fails at once, naming the allowed values
or the container to use instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gigasid.errors import GigasidError

__all__ = [
    "ALL_FORMATS",
    "DEFAULT_FORMATS",
    "JPEG_MAX_SIDE",
    "PNG_MAX_PIXELS",
    "PNG_MAX_SIDE",
    "ExportError",
    "ExportOptions",
]


#: Largest width or height libjpeg can encode.
JPEG_MAX_SIDE = 65500
#: Largest width or height the PNG specification allows (a 31-bit unsigned integer).
PNG_MAX_SIDE = 2**31 - 1
#: Largest pixel count gigasid writes as one PNG (2**30, about 1.07 gigapixels, 3.2 GB of RGB).
#: PNG is a single sequential zlib stream: no tiles, no random access, no pyramid, so nothing can
#: display or crop it without decoding it whole, and common decoders refuse far smaller images
#: (Pillow's decompression-bomb guard stops at about 179 MP). Beyond this bound PNG is refused and
#: the pyramidal TIFF or DeepZoom outputs are the right containers.
PNG_MAX_PIXELS = 2**30

#: Formats :func:`~gigasid.io.export.export_all` knows.
ALL_FORMATS = ("tiff", "dzi", "preview", "viewer", "png", "jpeg", "zarr", "ome-zarr", "iiif")
#: Formats :func:`~gigasid.io.export.export_all` writes by default.
DEFAULT_FORMATS = ("tiff", "dzi", "preview", "viewer")

_TIFF_COMPRESSIONS = ("jpeg", "deflate", "webp", "lzw", "none")
_DZI_TILE_FORMATS = ("jpg", "png", "webp")
_DZI_CONTAINERS = ("fs", "zip")


class ExportError(GigasidError):
    """An image cannot be exported as requested (format limit, bad shape, no disk space...)."""


@dataclass
class ExportOptions:
    """Settings of the pyramidal outputs.

    Parameters
    ----------
    tile_size
        Tile width and height of the pyramidal TIFF, in pixels (multiple of 16, 16..4096).
        DeepZoom tiles are ``tile_size - 2 * dzi_overlap`` pixels plus the overlap on each side,
        so each tile file is ``tile_size`` pixels square (the size viewers prefer), unless
        ``dzi_tile_size`` says otherwise. IIIF tiles are ``tile_size`` square too, and the
        OME-Zarr pyramid has the TIFF's levels (halvings until a level fits in one tile).
    tiff_compression
        Compression of the TIFF tiles: ``"jpeg"``, ``"deflate"``, ``"webp"``, ``"lzw"`` or
        ``"none"``. ``deflate``, ``lzw`` and ``none`` are lossless.
    quality
        Quality factor (1..100) of JPEG and WebP encodings (TIFF tiles, DeepZoom and IIIF tiles,
        preview).
    dzi_tile_format
        Encoding of DeepZoom tiles: ``"jpg"``, ``"png"`` or ``"webp"``.
    dzi_overlap
        Overlap of adjacent DeepZoom tiles, in pixels.
    dzi_container
        ``"fs"`` writes ``image.dzi`` and a directory ``image_files/`` (what the viewer reads);
        ``"zip"`` writes everything into one ``image.zip`` (archiving, serving from a zip-aware
        server; OpenSeadragon cannot read it directly).
    preview_long_side
        Longest side of ``preview.jpg``, in pixels.
    dzi_tile_size
        DeepZoom ``TileSize`` (without the overlap). ``None`` means ``tile_size - 2 *
        dzi_overlap``.
    iiif_base_url
        URL of the directory that will serve the IIIF tile directory (``iiif/``): the IIIF
        ``id`` written in ``info.json`` is this URL plus ``/iiif``, and IIIF clients build every
        tile's URL from it. An ``http://`` or ``https://`` URL without quotes, backslashes or
        white space. The default suits ``python -m http.server`` run in the output directory;
        the offline viewer does not use it.
    """

    tile_size: int = 256
    tiff_compression: str = "jpeg"
    quality: int = 90
    dzi_tile_format: str = "jpg"
    dzi_overlap: int = 1
    dzi_container: str = "fs"
    preview_long_side: int = 1024
    dzi_tile_size: int | None = None
    iiif_base_url: str = "http://localhost:8000"
    display_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_dzi_tile_size(self) -> int:
        """DeepZoom ``TileSize`` actually used (resolves ``dzi_tile_size=None``)."""
        if self.dzi_tile_size is not None:
            return int(self.dzi_tile_size)
        return int(self.tile_size) - 2 * int(self.dzi_overlap)

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and the allowed values."""
        _check_choice("tiff_compression", self.tiff_compression, _TIFF_COMPRESSIONS)
        _check_choice("dzi_tile_format", self.dzi_tile_format, _DZI_TILE_FORMATS)
        _check_choice("dzi_container", self.dzi_container, _DZI_CONTAINERS)
        _check_int("tile_size", self.tile_size, 16, 4096)
        if self.tile_size % 16:
            raise ValueError(
                f"tile_size must be a multiple of 16 (TIFF requirement), got {self.tile_size}; "
                "allowed: 16, 32, ..., 4096"
            )
        _check_int("quality", self.quality, 1, 100)
        _check_int("dzi_overlap", self.dzi_overlap, 0, 64)
        _check_int("preview_long_side", self.preview_long_side, 1, JPEG_MAX_SIDE)
        if self.dzi_tile_size is not None:
            _check_int("dzi_tile_size", self.dzi_tile_size, 1, 8192)
        _check_url("iiif_base_url", self.iiif_base_url)
        if self.display_window is not None:
            lo, hi = (float(v) for v in self.display_window)
            if not hi > lo:
                raise ValueError(f"display_window must be (lo, hi) with hi > lo, got "
                                 f"{self.display_window}")
        dzi_tile = self.effective_dzi_tile_size
        if dzi_tile < 1 or self.dzi_overlap * 2 > dzi_tile:
            raise ValueError(
                f"DeepZoom tile size {dzi_tile} (tile_size={self.tile_size}, "
                f"dzi_overlap={self.dzi_overlap}, dzi_tile_size={self.dzi_tile_size}) is too "
                "small for its overlap: need dzi_overlap <= TileSize / 2"
            )


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(
            f"invalid {name} {value!r}: allowed values are " + ", ".join(map(repr, allowed))
        )


def _check_url(name: str, value: object) -> None:
    # the URL goes verbatim into info.json (libvips does not escape it) and into tile URLs
    if (
        not isinstance(value, str)
        or not value.startswith(("http://", "https://"))
        or not value.split("://", 1)[1].strip("/")
        or any(ch.isspace() or ch in '"\\<>' or ord(ch) < 32 for ch in value)
    ):
        raise ValueError(
            f"{name} must be an http:// or https:// URL without quotes, backslashes or white "
            f"space (where the tiles will be served, e.g. 'https://example.org/images/run1'), "
            f"got {value!r}"
        )


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
