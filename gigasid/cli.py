"""The ``gigasid`` command line: ``run``, ``plan``, ``--version``.

Exit codes: 0 success, 1 internal error, 2 user/config/input error (message, no traceback),
130 interrupted.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from gigasid import __version__
from gigasid.errors import GigasidError, RunDirError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Training-free single-image diffusion: new images from one image.")

ConfigArg = Annotated[Path, typer.Argument(help="Job config (YAML).", show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(  # noqa: UP045
    help="Overrides as dotted key=value, e.g. seed=3 denoiser.backend=exact.",
    show_default=False)]


def _err(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gigasid {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """gigasid turns one reference image into new images (variations, retargets, ...)."""


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory "  # noqa: UP045
                                                "(default: runs/<config name>).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard an existing run in --out "
                                        "that has a different config.")] = False,
) -> None:
    """Run a job: generate images into the run directory."""

    from gigasid.config import load_config
    from gigasid.engine.allocator import tune_malloc
    from gigasid.engine.execute import is_cluster
    from gigasid.engine.job import check_job
    from gigasid.engine.lock import RunLock
    from gigasid.engine.progress import Fanout, JsonlLog, PlainReporter, RichReporter
    from gigasid.engine.run_dir import (
        check_disk,
        clear_run,
        guard_job,
        job_fingerprint,
        write_job_file,
    )
    from gigasid.engine.runner import prepare
    from gigasid.engine.runner import run as run_job
    from gigasid.io.images import image_shape

    tune_malloc()  # the driver computes tiles too (sync / threads schedulers)
    cfg = load_config(config, overrides or [])
    out = out or Path("runs") / cfg.name
    for f in cfg.input_paths():
        image_shape(f)  # a missing or unreadable file -> InputError with the full message
    # Extra inputs, model weights (a missing, gated or corrupt VAE), size limits and the
    # plan: checked once, here, before the run directory is touched; the job reuses them.
    checked = check_job(cfg)
    files, input_sha = checked.files, checked.input_sha256
    fingerprint = job_fingerprint(cfg, input_sha)
    # One driver at a time: an existing run is locked before anything reads or clears it
    # (a new directory right after it is created); a dead driver's lock is already gone.
    lock = RunLock(out).acquire() if out.is_dir() else None
    guard_job(out, fingerprint, fresh)
    check_disk(checked.plan, out)
    # A cluster is reached (or a local one started) before the run directory is created and
    # before any index is built: an unreachable scheduler costs seconds, not the setup.
    executor = None
    if is_cluster(cfg.engine.scheduler):
        from gigasid.engine.cluster import connect

        executor = connect(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {out}: {exc}") from None
    lock = lock or RunLock(out).acquire()
    if executor is not None:
        if not quiet:
            typer.echo(f"Dask cluster {cfg.engine.scheduler}: dashboard {executor.dashboard}",
                       err=True)
        try:
            executor.check_run_dir(out, files)
        except BaseException:
            executor.shutdown()
            raise
    resuming = (out / "job.yaml").exists() and not fresh
    if fresh:
        clear_run(out)
    write_job_file(out, cfg, fingerprint, files, input_sha)
    log = JsonlLog(out / "log.jsonl")
    screen = None if quiet else (RichReporter() if sys.stderr.isatty() else PlainReporter())
    reporter = Fanout(log, screen)
    try:
        try:
            job = prepare(cfg, reporter, run_dir=out, checked=checked)
        except BaseException:
            if executor is not None:
                executor.shutdown()
            raise
        (out / "plan.json").write_text(json.dumps(job.plan.to_dict(), indent=2, default=list))
        if resuming:
            log.event("resume", store=job.plan.store)
        summary = run_job(cfg, out, reporter, job=job, executor=executor)
    except KeyboardInterrupt:
        log.event("interrupted")
        if (out / "data.zarr").exists():
            typer.echo(f"interrupted: run the same command again to resume {out}", err=True)
        raise
    except GigasidError as exc:
        log.event("error", message=str(exc))
        raise
    finally:
        reporter.close()
    summary.pop("plan")
    (out / "timings.json").write_text(json.dumps(summary, indent=2))
    lock.release()
    if not quiet:
        typer.echo(f"wrote {len(summary['samples'])} image(s) to {out}")


@app.command()
def plan(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Print the per-scale plan (sizes, patches, backend, estimates); touches nothing."""
    from rich.console import Console
    from rich.table import Table

    from gigasid.codecs import make_codec
    from gigasid.config import load_config
    from gigasid.engine.job import reference_shapes
    from gigasid.engine.plan import make_plan
    from gigasid.engine.runner import resolve_device

    cfg = load_config(config, overrides or [])
    shapes = reference_shapes(cfg)
    shape = shapes[0]
    device = resolve_device(cfg.device)
    codec = make_codec(cfg, device, load=False)
    p = make_plan(cfg, shapes, device, codec=codec)
    space = "px" if codec.factor == 1 else f"latent px ({codec.channels} ch, x{codec.factor})"
    t = Table(title=f"{cfg.app}: {shape[1]}x{shape[0]} -> {p.pixel_shape[1]}x{p.pixel_shape[0]} "
                    f"px on {device} ({cfg.dtype}); scales in {space}")
    for col in ("scale", "reference", "output", "patches N", "queries M", "backend", "steps",
                "stride", "rho", "est. time", "est. memory"):
        t.add_column(col, justify="right")
    for s in p.scales:
        t.add_row(str(s.index), f"{s.ref_shape[1]}x{s.ref_shape[0]}",
                  f"{s.shape[1]}x{s.shape[0]}", f"{s.n_patches:,}", f"{s.n_queries:,}",
                  s.backend if s.backend != "ann" else
                  f"ann {s.ann_index} {s.index_bytes / 2**20:,.0f} MiB",
                  str(s.transitions) if s.denoised else "pinned",
                  str(s.query_stride), f"{s.fold_rho:g}", f"{s.est_seconds:.2f} s",
                  f"{s.est_bytes / 2**20:.0f} MiB")
    con = Console(width=max(Console().width, 132))
    con.print(t)
    con.print(f"estimated: setup {p.est_setup_seconds:.1f} s, {p.est_sample_seconds:.1f} s per "
              f"sample x {p.num_samples}, peak memory {p.est_peak_bytes / 2**20:.0f} MiB")
    if codec.factor > 1:
        enc = sum((c[1] - c[0]) * (c[3] - c[2]) for c in p.crops)
        est = codec.estimate(enc, p.pixel_shape[0] * p.pixel_shape[1] * p.num_samples, device)
        con.print(f"codec: {codec.kind} '{cfg.latent.vae}' ({codec.src.folder}), "
                  f"{codec.channels} ch, factor {codec.factor}, tiles {codec.tile} + halo "
                  f"{codec.halo} latent px; inputs centre-cropped to multiples of "
                  f"{codec.pixel_multiple} px; est. encode {est['encode_seconds']:.1f} s, "
                  f"decode {est['decode_seconds']:.1f} s, VAE memory "
                  f"{est['peak_bytes'] / 2**20:.0f} MiB")


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Say where a run is: per sample and scale, steps and tiles done, and an ETA."""
    from gigasid.engine.status import run_status

    typer.echo(run_status(run_dir))


def _sample_dir(run_dir: Path, sample: int) -> Path:
    out = run_dir / "out"
    sub = out / f"sample_{sample:03d}"
    if sub.is_dir():
        return sub
    if sample == 0 and out.is_dir():
        return out
    raise RunDirError(f"{run_dir} has no outputs for sample {sample} (is the run finished? "
                      f"see `gigasid status {run_dir}`)")


def _sample_image(run_dir: Path, sample: int):
    """The finished image of a sample, in the run's pixel format: its Zarr array, else its
    PNG."""
    d = _sample_dir(run_dir, sample) if (run_dir / "out").exists() else None
    if d is not None and (d / "image.zarr").exists():
        import zarr

        return zarr.open_array(str(d / "image.zarr"), mode="r")
    png = run_dir / f"sample_{sample:03d}.png"
    if png.is_file():
        from gigasid.io.images import decode_native

        return decode_native(png)
    raise RunDirError(f"{run_dir} has no finished image for sample {sample}")


def _display_window(run_dir: Path) -> tuple[float, float] | None:
    """The window the run's 8-bit renderings show (16-bit and float runs; see plan.json)."""
    import json

    try:
        fmt = json.loads((run_dir / "plan.json").read_text()).get("pixel_format") or {}
    except (OSError, ValueError):
        return None
    if fmt.get("dtype", "uint8") == "uint8":
        return None
    return float(fmt["lo"]), float(fmt["hi"])


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    sample: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--sample", "-s", help="Which sample (default: the first; while running, the one "
        "being computed).")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free).")] = 0,
    browser: Annotated[bool, typer.Option("--browser/--no-browser",
                                          help="Open the web browser.")] = True,
) -> None:
    """Serve a run on 127.0.0.1 and open it in the browser: the deep-zoom viewer of a
    finished run, a live view (progress and a refreshed picture) of a running one."""
    from gigasid.engine.status import run_progress
    from gigasid.io.serve import serve

    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    viewer = None
    try:
        viewer = _sample_dir(run_dir, sample or 0) / "index.html"
    except RunDirError:
        pass
    # a finished job (or exported files without a job): its viewer; anything else is live
    job = run_dir / "job.yaml"
    if viewer is not None and viewer.is_file() and (
            not job.is_file() or run_progress(run_dir).finished):
        server = serve(viewer.parent, port=port, open_browser=browser)
        typer.echo(f"serving {viewer.parent} at {server.url}  (Ctrl-C to stop)", err=True)
    else:
        from gigasid.engine.live import LiveView
        from gigasid.io.live_page import LIVE_PREFIX, live_routes

        if not job.is_file():
            raise RunDirError(f"{run_dir} is not a gigasid run directory (no job.yaml) and "
                              "has no viewer")
        live = LiveView(run_dir, sample=sample)
        # the files under out/ (the viewer, once written) next to the live page
        server = serve(run_dir / "out", port=port, open_browser=browser,
                       page=LIVE_PREFIX.lstrip("/"),
                       routes=live_routes(live.status, live.snapshot_png))
        typer.echo(f"live view of {run_dir} at {server.url}{LIVE_PREFIX.lstrip('/')}  "
                   "(Ctrl-C to stop)", err=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    fmt: Annotated[list[str], typer.Option("--format", "-f", help="tiff, dzi, png, jpeg, "
                                           "zarr, ome-zarr, iiif, preview or viewer "
                                           "(repeatable).")],
    sample: Annotated[int, typer.Option("--sample", "-s", help="Which sample.")] = 0,
    to: Annotated[Optional[Path], typer.Option("--to", help="Output folder "  # noqa: UP045
                                               "(default: the sample's out/ folder).")] = None,
    tile_size: Annotated[int, typer.Option(help="TIFF/DZI tile side.")] = 256,
    compression: Annotated[str, typer.Option(help="TIFF compression: jpeg, deflate, webp, "
                                             "lzw or none.")] = "jpeg",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 90,
    tile_format: Annotated[str, typer.Option(help="DZI tile format: jpg, png, webp.")] = "jpg",
    container: Annotated[str, typer.Option(help="DZI container: fs or zip.")] = "fs",
) -> None:
    """Re-export a finished run's image without re-running it."""
    from gigasid.io import export as ex

    ex.limit_heap_fragmentation()  # keeps libvips' strip buffers from bloating the heap
    image = _sample_image(run_dir, sample)
    dest = to or _sample_dir(run_dir, sample)
    try:
        opts = ex.ExportOptions(tile_size=tile_size, tiff_compression=compression,
                                quality=quality, dzi_tile_format=tile_format,
                                dzi_container=container,
                                display_window=_display_window(run_dir))
        opts.validate()
        names = {"jpg": "jpeg", "tif": "tiff"}
        fmts = [names.get(f, f) for f in fmt]
        written = ex.export_all(image, dest, opts, formats=fmts)
    except ValueError as exc:
        raise ex.ExportError(str(exc)) from None
    for k, v in written.items():
        typer.echo(f"{k}: {v}")


def main() -> None:
    """Console entry point with the exit-code contract."""
    try:
        _main()
    finally:
        # Everything is written and flushed by now. Freezing the heap spares the interpreter's
        # shutdown its garbage collections over torch's object graph (about a second per run).
        gc.freeze()


def _main() -> None:
    try:
        app(standalone_mode=False)
    except GigasidError as exc:
        _err(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors come through here in standalone_mode=False
        name = type(exc).__name__
        if name in ("UsageError", "BadParameter", "NoSuchOption", "MissingParameter",
                    "BadArgumentUsage", "NoArgsIsHelpError"):
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                _err(str(exc))
            sys.exit(2)
        traceback.print_exc()
        _err(f"internal error ({name}); please report it with the traceback above")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
