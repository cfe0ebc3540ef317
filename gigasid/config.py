"""Job configuration: one YAML file plus dotted ``key=value`` overrides, validated.

Every user mistake becomes a :class:`ConfigError` that names the key, what was wrong and
how to fix it (with a did-you-mean for unknown keys). Per-scale fields accept a scalar
(every scale) or a list ordered finest -> coarsest.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from gigasid.checks import check_choice as _check_choice
from gigasid.checks import check_range as _check_range
from gigasid.errors import ConfigError

BACKENDS = ("auto", "exact", "sdpa", "ann")
INDEXES = ("auto", "flat", "ivf", "ivfpq")
SEARCHES = ("auto", "device", "host")  # where the ANN lists are searched (AnnSettings.search)
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("flow_linear", "ve_edm")
MAX_OUTPUT_SIDE = 1_000_000


@dataclass
class PyramidConfig:
    num_scales: Union[int, str] = "auto"  # noqa: UP007 - checked at runtime
    min_short_side: Union[int, None] = 24  # noqa: UP007
    relative_scale: float = 0.5


@dataclass
class DenoiserConfig:
    backend: Union[str, list] = "auto"  # noqa: UP007
    k: int = 5
    nprobe: int = 2
    index: str = "auto"
    index_memory_mb: int = 4096
    nlist: Union[int, None] = None  # noqa: UP007
    pq_m: int = 16
    pca_dim: int = 32
    train_size: int = 16384
    coarse_groups: int = 4
    search: str = "auto"
    exact_max_patches: Union[int, None] = None  # noqa: UP007


@dataclass
class EngineConfig:
    store: str = "auto"
    tile_size: int = 0
    scheduler: str = "sync"
    workers: int = 1
    threads: Union[int, None] = None  # noqa: UP007
    reference: str = "auto"


@dataclass
class OutputConfig:
    formats: list = field(default_factory=lambda: ["png", "tiff", "dzi", "preview", "viewer"])
    tile_size: int = 256
    tiff_compression: str = "jpeg"
    quality: int = 90
    dzi_tile_format: str = "jpg"
    dzi_container: str = "fs"
    preview_long_side: int = 1024
    #: where the ``iiif/`` folder will be served from (written into its ``info.json``)
    iiif_base_url: str = "http://localhost:8000"


@dataclass
class LatentConfig:
    """Run the sampler on VAE latents (spec §8) instead of pixels."""

    enabled: bool = False
    vae: str = "black-forest-labs/FLUX.1-schnell"
    subfolder: Union[str, None] = "vae"  # noqa: UP007
    dtype: str = "auto"
    tile: int = 128
    halo: int = 8
    stats_pixels: int = 1048576


@dataclass
class JobConfig:
    app: str = "uncond"
    input: Union[str, list] = ""  # noqa: UP007
    # Resize every reference so its long side is at most this many pixels (keeping the
    # aspect ratio) before anything else; None = use the inputs as they are.
    input_resize_to: Union[int, None] = None  # noqa: UP007
    seed: int = 0
    num_samples: int = 1
    output_size: Union[list, None] = None  # noqa: UP007
    patch_size: int = 15
    num_steps: Union[int, list] = 10  # noqa: UP007
    eta: float = 0.0
    fold_rho: Union[float, list] = 0.2  # noqa: UP007
    sigma_min: float = 1e-4
    schedule: str = "flow_linear"
    dataset_stride: Union[int, list, str] = "auto"  # noqa: UP007
    query_stride: Union[int, list, str] = "auto"  # noqa: UP007
    noise_level: float = 0.3
    device: str = "auto"
    dtype: str = "float32"
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)

    # Where the config was loaded from; relative input paths resolve against it.
    base_dir: str = field(default=".", metadata={"internal": True})
    name: str = field(default="job", metadata={"internal": True})
    # The application's own section (its ``Config`` dataclass), or None.
    app_config: Any = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict:
        """Plain-data view without internal fields (what ``job.yaml`` stores); the
        application's own keys appear at the top level, as in the YAML file."""
        d = {f.name: dataclasses.asdict(getattr(self, f.name)) if dataclasses.is_dataclass(
            getattr(self, f.name)) else getattr(self, f.name)
            for f in fields(self) if not f.metadata.get("internal")}
        if self.app_config is not None:
            d.update(dataclasses.asdict(self.app_config))
        return d

    def fingerprint(self) -> str:
        """SHA-256 of the canonical YAML of the resolved config, without the settings that
        cannot change a result or the run directory's layout (``engine.threads``, and which
        cluster ``engine.scheduler`` names: a run resumes on another cluster)."""
        doc = self.to_dict()
        doc["engine"].pop("threads", None)
        if "://" in doc["engine"]["scheduler"]:
            doc["engine"]["scheduler"] = "cluster"
        text = yaml.safe_dump(doc, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def resolve_path(self, value: str) -> Path:
        """A path from the config, resolved against the config's directory, or a bundled
        image (``builtin:NAME``)."""
        if value.startswith("builtin:"):
            from gigasid.io.images import builtin_image

            return builtin_image(value.split(":", 1)[1])
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def input_paths(self) -> list[Path]:
        """Every reference image (``input`` may be one path or a list)."""
        items = self.input if isinstance(self.input, list) else [self.input]
        return [self.resolve_path(str(v)) for v in items]

    def input_path(self) -> Path:
        """The first (main) reference image."""
        return self.input_paths()[0]


def _schema_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not
                                     dataclasses.MISSING else None):
            keys += _schema_keys(f.default_factory, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


COMMON_KEYS = _schema_keys(JobConfig)


def _app_keys() -> dict[str, str]:
    """``{key: app name}`` for every registered application's own keys."""
    from gigasid import registry

    out: dict[str, str] = {}
    for name, cls in registry.apps().items():
        if getattr(cls, "Config", None) is not None:
            for k in _schema_keys(cls.Config):
                out.setdefault(k, name)
    return out


def all_keys() -> list[str]:
    """Every key a config may hold: the common ones and every application's own."""
    return COMMON_KEYS + [k for k in _app_keys() if k not in COMMON_KEYS]


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against the annotated type, converting YAML scalars where safe."""
    origin = get_origin(typ)
    options = get_args(typ) if origin in (Union, types.UnionType) else (typ,)
    errors = []
    for opt in options:
        if opt is type(None):
            if value is None:
                return None
            continue
        if opt is list:
            if isinstance(value, (list, tuple)):
                return list(value)
            continue
        if opt is bool:
            if isinstance(value, bool):
                return value
            continue
        if opt is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            continue
        if opt is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
                return math.inf
            continue
        if opt is str:
            if isinstance(value, str):
                return value
            continue
        errors.append(opt)
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key '{key}' must be {names}, got {value!r}")


def _build(cls, data: dict, prefix: str = "", keys: list[str] | None = None):
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    keys = keys if keys is not None else _schema_keys(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise _unknown(prefix + str(key), [k for k in keys if k.startswith(prefix)]
                           or keys)
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value if value is not None else {}, prefix + key + ".",
                                 keys)
        else:
            kwargs[key] = _coerce(value, typ, prefix + key)
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{key}': '{p}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``dotted.key=value`` override; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. seed=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    known = all_keys()
    if key not in known:
        raise _unknown(key, known)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key, value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load, merge and validate a job config.

    Parameters
    ----------
    path:
        YAML file (``None`` for defaults only).
    overrides:
        ``key=value`` strings with dotted keys, applied after the file.
    """
    data: dict = {}
    base_dir, name = ".", "job"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
        data = loaded
        base_dir, name = str(p.resolve().parent), p.stem
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _build_job(data)
    cfg.base_dir, cfg.name = base_dir, name
    validate(cfg)
    return cfg


def from_dict(data: dict) -> JobConfig:
    """Build and validate a config from plain data (e.g. ``job.yaml``'s ``config``)."""
    cfg = _build_job(data)
    validate(cfg)
    return cfg


def _build_job(data: dict) -> JobConfig:
    """The common keys into :class:`JobConfig`, the application's own into its section."""
    from gigasid import registry

    common_top = {f.name for f in fields(JobConfig) if not f.metadata.get("internal")}
    common = {k: v for k, v in data.items() if k in common_top}
    rest = {k: v for k, v in data.items() if k not in common_top}
    cfg = _build(JobConfig, common, keys=all_keys())
    apps = registry.apps()
    _check_choice("app", cfg.app, tuple(apps))
    cls = getattr(apps[cfg.app], "Config", None)
    own = {f.name for f in fields(cls)} if cls is not None else set()
    owners = _app_keys()
    for key in rest:
        if key not in own:
            other = [k for k in owners if k == key or k.startswith(f"{key}.")]
            if other:
                # e.g. a tileable preset run with app=uncond to compare: say so, go on
                import logging

                logging.getLogger("gigasid").warning(
                    "config key '%s' is a setting of app '%s'; app '%s' ignores it", key,
                    owners[other[0]], cfg.app)
                continue
            raise _unknown(str(key), all_keys())
    if cls is not None:
        cfg.app_config = _build(cls, {k: v for k, v in rest.items() if k in own},
                                keys=_schema_keys(cls))
    return cfg


def _per_scale_items(key: str, value: Any) -> list:
    return list(value) if isinstance(value, list) else [value]


def validate(cfg: JobConfig) -> None:
    """Range and consistency checks that do not need the input image."""
    from gigasid import registry

    apps = registry.apps()
    _check_choice("app", cfg.app, tuple(apps))
    items = cfg.input if isinstance(cfg.input, list) else [cfg.input]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError("config key 'input' is required: the path of the reference image "
                          "(relative to the config file) or builtin:NAME, or a list of them")
    _check_range("num_samples", cfg.num_samples, 1, 10_000)
    if cfg.input_resize_to is not None:
        _check_range("input_resize_to", cfg.input_resize_to, 1, MAX_OUTPUT_SIDE)
    _check_range("patch_size", cfg.patch_size, 3, 255)
    _check_range("eta", cfg.eta, 0.0, 1.0)
    _check_range("sigma_min", cfg.sigma_min, 0.0, 0.5, lo_open=True)
    _check_range("noise_level", cfg.noise_level, 0.0, 1.0, lo_open=True)
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("dtype", cfg.dtype, DTYPES)
    for v in _per_scale_items("num_steps", cfg.num_steps):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"config key 'num_steps' entries must be integers; got {v!r}")
        _check_range("num_steps", v, 1, 10_000)
    for k in ("dataset_stride", "query_stride"):
        for v in _per_scale_items(k, getattr(cfg, k)):
            if v == "auto":
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"config key '{k}' entries must be integers or 'auto'"
                                  f"; got {v!r}")
            _check_range(k, v, 1, cfg.patch_size)
    rhos = _per_scale_items("fold_rho", cfg.fold_rho)
    for i, v in enumerate(rhos):
        try:
            rhos[i] = _coerce(v, float, "fold_rho")
        except ConfigError:
            raise ConfigError(f"config key 'fold_rho' entries must be numbers or .inf; "
                              f"got {v!r}") from None
        _check_range("fold_rho", rhos[i], 0.0, None, lo_open=True)
    cfg.fold_rho = rhos if isinstance(cfg.fold_rho, list) else rhos[0]
    for v in _per_scale_items("denoiser.backend", cfg.denoiser.backend):
        _check_choice("denoiser.backend", v, BACKENDS)
    d = cfg.denoiser
    _check_range("denoiser.k", d.k, 1, 4096)
    _check_range("denoiser.nprobe", d.nprobe, 1, None)
    _check_range("denoiser.coarse_groups", d.coarse_groups, 0, None)
    _check_choice("denoiser.search", d.search, SEARCHES)
    _check_choice("denoiser.index", d.index, INDEXES)
    _check_range("denoiser.pq_m", d.pq_m, 1, 256)
    _check_range("denoiser.index_memory_mb", d.index_memory_mb, 1, None)
    _check_range("denoiser.pca_dim", d.pca_dim, 0, None)
    _check_range("denoiser.train_size", d.train_size, 256, None)
    p = cfg.pyramid
    if isinstance(p.num_scales, str):
        if p.num_scales != "auto":
            raise ConfigError("config key 'pyramid.num_scales' must be an integer >= 1 or "
                              f"'auto'; got {p.num_scales!r}")
    else:
        _check_range("pyramid.num_scales", p.num_scales, 1, 32)
    if p.min_short_side is not None:
        _check_range("pyramid.min_short_side", p.min_short_side, 1, None)
    _check_range("pyramid.relative_scale", p.relative_scale, 0.05, 0.95)
    if cfg.output_size is not None:
        osz = cfg.output_size
        if (len(osz) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                     for v in osz)):
            raise ConfigError(f"config key 'output_size' must be [height, width] in pixels; "
                              f"got {osz!r}")
        for v in osz:
            if v < 1 or v > MAX_OUTPUT_SIDE:
                raise ConfigError(f"config key 'output_size' sides must be between 1 and "
                                  f"{MAX_OUTPUT_SIDE} pixels; got {osz}")
    e = cfg.engine
    _check_choice("engine.store", e.store, ("auto", "memory", "zarr"))
    _check_range("engine.tile_size", e.tile_size, 0, None)
    if 0 < e.tile_size < 16:
        raise ConfigError("engine.tile_size must be 0 (automatic) or at least 16 px")
    cluster = e.scheduler == "local-cluster" or e.scheduler.startswith(("tcp://", "tls://"))
    if not cluster and e.scheduler not in ("sync", "threads", "processes"):
        raise ConfigError("engine.scheduler must be sync, threads, processes, local-cluster or "
                          f"a Dask scheduler address (tcp://HOST:PORT); got {e.scheduler!r}")
    if cluster and e.store == "memory":
        raise ConfigError(f"engine.scheduler: {e.scheduler} needs engine.store: zarr (cluster "
                          "workers share the run directory, not this process's memory)")
    _check_range("engine.workers", e.workers, 1, 1024)
    _check_choice("engine.reference", e.reference, ("auto", "memory", "disk"))
    if e.scheduler == "processes" and e.store == "memory":
        raise ConfigError("engine.scheduler: processes needs engine.store: zarr (worker "
                          "processes share the run directory, not this process's memory)")
    if cfg.engine.threads is not None:
        _check_range("engine.threads", cfg.engine.threads, 1, 1024)
    o = cfg.output
    for fmt in o.formats:
        _check_choice("output.formats", fmt, ("png", "tiff", "dzi", "preview", "viewer", "zarr",
                                              "ome-zarr", "iiif"))
    loose_dzi = "dzi" in o.formats and o.dzi_container == "fs"
    if "viewer" in o.formats and not (loose_dzi or "iiif" in o.formats):
        raise ConfigError("output.formats: 'viewer' needs 'dzi' with output.dzi_container: fs, "
                          "or 'iiif' (the viewer reads loose tiles)")
    _check_choice("output.tiff_compression", o.tiff_compression,
                  ("jpeg", "deflate", "webp", "lzw", "none"))
    _check_range("output.quality", o.quality, 1, 100)
    _check_choice("output.dzi_tile_format", o.dzi_tile_format, ("jpg", "png", "webp"))
    _check_choice("output.dzi_container", o.dzi_container, ("fs", "zip"))
    from gigasid.io.export_options import _check_url

    try:
        _check_url("output.iiif_base_url", o.iiif_base_url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    lt = cfg.latent
    _check_choice("latent.dtype", lt.dtype, ("auto", "float32", "bfloat16", "float16"))
    _check_range("latent.tile", lt.tile, 8, 4096)
    _check_range("latent.halo", lt.halo, 0, 256)
    _check_range("latent.stats_pixels", lt.stats_pixels, 4096, None)
    app = apps[cfg.app]()
    if lt.enabled and not getattr(app, "latent", True):
        raise ConfigError(f"app '{cfg.app}' runs in pixel space only (latent.enabled: true is "
                          f"not supported: {getattr(app, 'latent_reason', 'see docs/latent.md')}); "
                          "set latent.enabled: false")
    app.validate(cfg)


def per_scale(value: Any, num_scales: int, key: str) -> list:
    """Expand a scalar-or-list field to ``num_scales`` entries (finest first)."""
    if isinstance(value, list):
        if len(value) != num_scales:
            raise ConfigError(f"config key '{key}' has {len(value)} entries but the job has "
                              f"{num_scales} scales (list them finest first, or give one value)")
        return list(value)
    return [value] * num_scales


def dump_yaml(cfg: JobConfig) -> str:
    """The resolved config as YAML (``inf`` written as ``.inf``)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
