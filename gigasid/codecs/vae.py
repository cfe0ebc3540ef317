"""The VAE codec: a diffusers ``AutoencoderKL`` (the FLUX VAE by default) or
``AutoencoderTiny``, run tile by tile with its image-wide state fixed once per call.

Encode (spec §8.2): centre crop to a multiple of ``pixel_multiple``, the posterior's mode,
then ``(z - shift) * scale``; decode: ``decoder(z / scale + shift)``. Both stream: the image
is cut into tiles on a grid fixed by ``tile`` (latent pixels), each run on its window (the
tile grown by ``halo`` latent pixels, read through the domain: wrapped on a torus, reflected
on a mirror axis) and cropped to its core. Before the tiles, a sample of windows (the whole
image when it fits ``stats_pixels``) is run as one batch whose GroupNorm layers normalise
with the statistics of all of them together and whose mid-block self-attention attends to
all their tokens; both are then used unchanged for every tile
(:mod:`gigasid.codecs.fixed_stats`), so tiles do not differ in tone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gigasid.codecs.base import PixelCodec, Reader, Region
from gigasid.codecs.fixed_stats import FixedStatistics
from gigasid.codecs.tiles import Tile, axis_padding, calibration_tiles, core_fraction, tile_grid
from gigasid.core.domain import Domain, read_window
from gigasid.errors import ModelError

#: Parameters of the FLUX VAE (the throughput model's unit).
FLUX_PARAMS = 83_800_000
#: Seconds per megapixel of the FLUX VAE, full size (2 CPU cores, float32: measured with
#: benchmarks/bench_latent.py; CUDA: projected, see docs/scaling.md). Other models scale by their
#: parameter count.
CODEC_SECONDS_PER_MP = {"cpu": {"encode": 38.0, "decode": 77.0},
                        "cuda": {"encode": 0.05, "decode": 0.1}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CLASSES = ("AutoencoderKL", "AutoencoderTiny")


@dataclass(frozen=True)
class VaeSource:
    """Where a VAE's files are: a local directory holding ``config.json`` and weights."""

    spec: str
    folder: Path
    class_name: str
    config: dict


def _how_to_get(spec: str, subfolder: str | None) -> str:
    sub = f" --include '{subfolder}/*'" if subfolder else ""
    return (f"to use '{spec}': on a machine with internet access, accept the model's terms on "
            f"its Hugging Face page if it is gated, run `hf auth login`, then "
            f"`hf download {spec}{sub}` (it lands in the Hugging Face cache that gigasid "
            "reads); or point latent.vae at a local directory saved with "
            "`save_pretrained` (one holding config.json and the weights)")


def resolve_vae(spec: str, subfolder: str | None = "vae", base_dir: str | Path = "."
                ) -> VaeSource:
    """Find a VAE's config: a local directory (``spec`` itself or ``spec/subfolder``) or a
    Hugging Face repository id, from the local cache (downloading only where the hub is
    reachable and ``HF_HUB_OFFLINE`` is not set).

    Raises :class:`ModelError` with what to do when it cannot be had.
    """
    p = Path(spec).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    looks_local = spec.startswith((".", "/", "~")) or p.exists()
    if looks_local:
        for cand in ([p / subfolder] if subfolder else []) + [p]:
            if (cand / "config.json").is_file():
                return _source(spec, cand)
        raise ModelError(f"latent.vae: no VAE at {p} (expected config.json and weights there"
                         f"{' or in ' + str(p / subfolder) if subfolder else ''}); "
                         + _how_to_get(spec, subfolder))
    if spec.count("/") != 1:
        raise ModelError(f"latent.vae: '{spec}' is neither an existing directory nor a Hugging "
                         "Face repository id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of diffusers
        raise ModelError("latent mode needs diffusers: pip install 'gigasid[latent]'") from None
    patterns = [f"{subfolder}/*"] if subfolder else None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    last = None
    for local_only in ((True,) if offline else (True, False)):
        try:
            root = Path(snapshot_download(spec, allow_patterns=patterns,
                                          local_files_only=local_only))
        except Exception as exc:  # the hub raises many kinds: offline, gated, missing
            last = exc
            continue
        folder = root / subfolder if subfolder else root
        if (folder / "config.json").is_file():
            return _source(spec, folder)
        last = FileNotFoundError(f"{folder / 'config.json'} missing")
    reason = type(last).__name__ if last is not None else "not found"
    if "Gated" in reason or "401" in str(last):
        reason = "the repository is gated (accept its terms and log in)"
    raise ModelError(f"latent.vae: cannot load '{spec}' ({reason}): " + _how_to_get(spec,
                                                                                  subfolder))


def _source(spec: str, folder: Path) -> VaeSource:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"latent.vae: unreadable {folder / 'config.json'}: {exc}") from None
    name = config.get("_class_name", "AutoencoderKL")
    if name not in CLASSES:
        raise ModelError(f"latent.vae: {folder} holds a {name}; gigasid runs "
                         f"{' or '.join(CLASSES)}")
    return VaeSource(spec, folder, name, config)


_MODELS: dict = {}


def load_vae(src: VaeSource, dtype: torch.dtype, device: str):
    """The model of ``src`` on ``device`` in ``dtype``, eval mode, no gradients; cached per
    process. Raises :class:`ModelError` for missing or corrupt weights."""
    key = (str(src.folder), dtype, device)
    if key in _MODELS:
        return _MODELS[key]
    try:
        import diffusers
    except ImportError:
        raise ModelError("latent mode needs diffusers: pip install 'gigasid[latent]'") from None
    cls = getattr(diffusers, src.class_name)
    diffusers.utils.logging.set_verbosity_error()  # its config notes are not the user's concern
    try:
        model = cls.from_pretrained(str(src.folder), torch_dtype=dtype, local_files_only=True,
                                    low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises OSError, ValueError, safetensors errors, ...
        raise ModelError(f"latent.vae: cannot load the weights in {src.folder} "
                         f"({type(exc).__name__}: {str(exc)[:200]}); they are missing or "
                         "corrupt: download them again, or " + _how_to_get(src.spec, None)
                         ) from None
    model = model.to(device).eval().requires_grad_(False)
    if hasattr(model, "disable_tiling"):
        model.disable_tiling()  # we tile ourselves (with fixed image-wide statistics)
    _MODELS[key] = model
    return model


def _scale_factor(src: VaeSource) -> int:
    cfg = src.config
    blocks = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels") or [0]
    up = cfg.get("upsampling_scaling_factor", 2)
    return int(up ** (len(blocks) - 1))


class VaeCodec(PixelCodec):
    """Latent space of a diffusers VAE, streamed tile by tile.

    Parameters
    ----------
    src, model:
        The resolved source and the loaded model.
    tile, halo:
        Core side and halo of a tile, in latent pixels.
    stats_pixels:
        Output (pixel) area of the windows that measure a call's image-wide statistics.
    """

    name = "vae"

    def __init__(self, src: VaeSource, model, *, dtype: torch.dtype, device: str,
                 tile: int = 128, halo: int = 8, stats_pixels: int = 2**20) -> None:
        self.src, self.model = src, model
        self.kind = src.class_name
        self.dtype, self.device = dtype, device
        self.factor = _scale_factor(src)
        self.pixel_multiple = 2 * self.factor  # keeps latent sides even (spec §8.2)
        self.channels = int(src.config.get("latent_channels", 4))
        self.scale = float(src.config.get("scaling_factor") or 1.0)
        self.shift = float(src.config.get("shift_factor") or 0.0)
        self.tile, self.halo = int(tile), int(halo)
        self.stats_latent = max(1, int(stats_pixels) // self.factor**2)

    # ---- the networks on one batch of windows ------------------------------------------
    def _encode_net(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        if self.kind == "AutoencoderTiny":
            z = self.model.encode(x).latents
        else:
            z = self.model.encode(x).latent_dist.mode()
        return ((z.float() - self.shift) * self.scale)

    def _decode_net(self, z: torch.Tensor) -> torch.Tensor:
        z = (z.float() / self.scale + self.shift).to(self.device, self.dtype)
        return self.model.decode(z).sample.float()

    # ---- streamed calls -----------------------------------------------------------------
    def _stream(self, net: Callable, part, tiles: list[Tile], domain: Domain, read_window_fn,
                in_scale: int, out_scale: int, reporter=None, what: str = "decode"
                ) -> Callable[[Tile], torch.Tensor]:
        """Measure the image-wide statistics on a batch of windows, then return
        ``run(tile) -> (C, h, w)`` (the tile's core). ``in_scale`` / ``out_scale``: input /
        output pixels per latent pixel."""
        gn = FixedStatistics(part)
        cache: dict[Tile, torch.Tensor] = {}
        H, W = domain.shape
        whole = Tile((0, 0, 0, 0), (0, 0, 0, 0))
        if H * W <= self.stats_latent:
            # The whole image fits the budget: one call measures its own statistics and its
            # result is every tile's (the streamed result *is* the whole-image call; a
            # periodic axis is decoded as the ring, with circular padding).
            whole = Tile((0, H, 0, W), (0, H, 0, W), domain.wraps)
        calib = [whole] if whole.window[1] else calibration_tiles(tiles, self.stats_latent)
        if not gn.empty or calib[0] is whole:
            # windows of different shapes (at the image's borders) are padded at the bottom
            # and right to one shape, to run as one batch; only their cores are measured
            hm = max(t.window_shape[0] for t in calib)
            wm = max(t.window_shape[1] for t in calib)
            batch = torch.stack([F.pad(read_window_fn(t)[None],
                                       (0, (wm - t.window_shape[1]) * in_scale, 0,
                                        (hm - t.window_shape[0]) * in_scale),
                                       mode="replicate")[0] for t in calib])
            with torch.no_grad(), gn.measure([core_fraction(t, (hm, wm)) for t in calib]), \
                    axis_padding(part, calib[0].circular):
                out = net(batch)
            if calib[0] is whole:
                for t in tiles:
                    cache[t] = self._crop(t, out[0], out_scale, origin=whole.window).cpu()
            else:
                for t, o in zip(calib, out, strict=True):
                    cache[t] = self._crop(t, o, out_scale).cpu()
            if reporter is not None:
                reporter.event(f"{what}_calibrated", windows=len(calib),
                               window=list(calib[0].window_shape))

        def run(t: Tile) -> torch.Tensor:
            if t in cache:
                return cache.pop(t)
            x = read_window_fn(t)[None]
            with torch.no_grad(), (contextlib.nullcontext() if gn.empty else gn.apply()), \
                    axis_padding(part, t.circular):
                o = net(x)[0]
            return self._crop(t, o, out_scale).cpu()

        return run

    @staticmethod
    def _crop(t: Tile, out: torch.Tensor, scale: int, origin=None) -> torch.Tensor:
        origin = origin or t.window
        y0 = (t.core[0] - origin[0]) * scale
        x0 = (t.core[2] - origin[2]) * scale
        h = (t.core[1] - t.core[0]) * scale
        w = (t.core[3] - t.core[2]) * scale
        return out[:, y0:y0 + h, x0:x0 + w]

    def encode(self, pixels: torch.Tensor, reporter=None) -> torch.Tensor:
        """``(3, H, W)`` pixels in ``[-1, 1]`` (``H, W`` multiples of the factor) ->
        ``(C, H/f, W/f)`` latent, tile by tile."""
        f = self.factor
        _, H, W = pixels.shape
        dom = Domain.make((H // f, W // f))
        tiles = tile_grid(dom, self.tile, self.halo)

        def window(t: Tile) -> torch.Tensor:
            y0, y1, x0, x1 = t.window
            return pixels[:, y0 * f:y1 * f, x0 * f:x1 * f].float()

        run = self._stream(self._encode_net, self.model.encoder, tiles, dom, window, f, 1,
                           reporter, "encode")
        out = torch.empty(self.channels, H // f, W // f)
        for i, t in enumerate(tiles):
            y0, y1, x0, x1 = t.core
            out[:, y0:y1, x0:x1] = run(t)
            if reporter is not None:
                reporter.event("codec_tile", what="encode", done=i + 1, tiles=len(tiles))
        return out

    def decoder(self, read: Reader, domain: Domain, reporter=None):
        """Stream the decode of a finished latent: returns ``decode(full_pixel_window)``.

        Tiles are decoded on first use and kept until every pixel of theirs was read once
        (an LRU of one row of tiles covers a band-by-band export). On mirror axes only the
        leading half is decoded and the trailing half reflects it in pixels (the mirror
        fix-up: the output is exactly symmetric).
        """
        f = self.factor
        tiles = tile_grid(domain, self.tile, self.halo)
        # tiles lie on a regular grid of side ``tile`` (one tile across a whole ring)
        grid = {(t.core[0] // self.tile, t.core[2] // self.tile): t for t in tiles}
        ny = 1 + max(k[0] for k in grid)
        nx = 1 + max(k[1] for k in grid)

        def window(t: Tile) -> torch.Tensor:
            return read_window(read, domain, t.window).float()

        run = self._stream(self._decode_net, self.model.decoder, tiles, domain, window, 1, f,
                           reporter, "decode")
        row = max(1, -(-domain.stored_shape[1] // self.tile))
        cache: OrderedDict = OrderedDict()
        done = [0]

        def decoded(t: Tile) -> torch.Tensor:
            if t.core in cache:
                cache.move_to_end(t.core)
                return cache[t.core]
            v = run(t)
            done[0] += 1
            if reporter is not None:
                reporter.event("codec_tile", what="decode", done=done[0], tiles=len(tiles))
            cache[t.core] = v
            while len(cache) > row + 1:
                cache.popitem(last=False)
            return v

        pdom = Domain.make((domain.y.size * f, domain.x.size * f),
                           (domain.y.kind, domain.x.kind))

        def read_stored(win: Region) -> torch.Tensor:
            y0, y1, x0, x1 = win
            out = torch.empty(3, y1 - y0, x1 - x0)
            step = self.tile * f
            rows = range(min(ny - 1, y0 // step), min(ny - 1, (y1 - 1) // step) + 1)
            cols = range(min(nx - 1, x0 // step), min(nx - 1, (x1 - 1) // step) + 1)
            for t in (grid[(r, c)] for r in rows for c in cols):
                cy0, cy1, cx0, cx1 = (c * f for c in t.core)
                if cy1 <= y0 or cy0 >= y1 or cx1 <= x0 or cx0 >= x1:
                    continue
                v = decoded(t)
                a, b = max(y0, cy0), min(y1, cy1)
                c, d = max(x0, cx0), min(x1, cx1)
                out[:, a - y0:b - y0, c - x0:d - x0] = v[:, a - cy0:b - cy0, c - cx0:d - cx0]
            return out

        return lambda win: read_window(read_stored, pdom, win)

    # ---- estimates ----------------------------------------------------------------------
    def estimate(self, encode_pixels: int, decode_pixels: int, device: str) -> dict:
        """Seconds and peak bytes of the job's encode and decode (a throughput model)."""
        if self.model is not None:
            params = sum(p.numel() for p in self.model.parameters())
        else:  # from the config: convolutions scale with the squared block widths
            cfg = self.src.config
            widths = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels")
            layers = cfg.get("layers_per_block", 2)
            params = FLUX_PARAMS * sum(c * c for c in widths) / 606_208 * (layers + 1) / 3
        rate = CODEC_SECONDS_PER_MP["cuda" if device.startswith("cuda") else "cpu"]
        k = params / FLUX_PARAMS
        win = (self.tile + 2 * self.halo) ** 2 * self.factor**2
        calib = min(self.stats_latent * self.factor**2, decode_pixels)
        width = (self.src.config.get("block_out_channels") or [64])[0]
        halo = win / (self.tile * self.factor) ** 2
        return {"encode_seconds": rate["encode"] * k * halo * encode_pixels / 2**20,
                "decode_seconds": rate["decode"] * k * halo * decode_pixels / 2**20,
                # the widest full-resolution activations, a few alive at once
                "peak_bytes": int(6 * width * 4 * max(win, calib)
                                  + params * torch.finfo(self.dtype).bits // 8)}

    # ---- description --------------------------------------------------------------------
    def describe(self) -> dict:
        return {"name": self.name, "class": self.kind, "vae": self.src.spec,
                "folder": str(self.src.folder), "channels": self.channels,
                "factor": self.factor, "pixel_multiple": self.pixel_multiple,
                "scaling_factor": self.scale, "shift_factor": self.shift,
                "dtype": str(self.dtype).replace("torch.", ""), "tile": self.tile,
                "halo": self.halo}

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.src.config, sort_keys=True).encode())
        for wfile in sorted(self.src.folder.glob("*.safetensors")) + sorted(
                self.src.folder.glob("*.bin")):
            st = wfile.stat()
            h.update(f"{wfile.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        h.update(json.dumps(self.describe(), sort_keys=True).encode())
        h.update(str(self.stats_latent).encode())
        return h.hexdigest()[:16]


__all__ = ["VaeCodec", "VaeSource", "load_vae", "resolve_vae"]
