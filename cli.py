"""retouch-batch: the command line, a thin layer over pipeline/ and jobs/."""
from __future__ import annotations

import functools
import json
import os
import sys

import click

from pipeline.defaults import DEFAULT_LUT_SIZE, DEFAULT_MAX_PIXELS, OUTPUT_FORMATS

TIFF_CODECS = ("none", "zlib", "lzw", "zstd")
MODEL_HELP = "Retoucher by name (`retouch-batch models` lists them), with its shipped weights unless --weights."


def user_errors(fn):
    """Library errors become one-line messages (exit 1); Ctrl-C says how to resume (exit 130)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from jobs.executor import JobInterrupted
        from jobs.lock import FolderBusy
        from jobs.rerender import EditError
        from manifests.manifest import ManifestError
        from pipeline.checkpoint import CheckpointError
        try:
            return fn(*args, **kwargs)
        except JobInterrupted as e:
            click.echo(f"\ninterrupted: {e.done} of {e.total} images finished and recorded. "
                       "Run the same command again to resume.", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("\ninterrupted before any image was processed; nothing was written.", err=True)
            sys.exit(130)
        except (ManifestError, CheckpointError, FolderBusy, EditError, FileNotFoundError, ValueError,
                RuntimeError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


def job_options(fn):
    """Options shared by run and rerender."""
    decorators = [
        click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False),
                     help="Output folder (outputs and, by default, the ledger in <out>/ledger)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Ray workers. Default: one per GPU, else one per --cpus-per-worker CPUs of the cluster."),
        click.option("--cpus-per-worker", type=click.IntRange(min=1), default=None,
                     help="CPU cores each worker claims from Ray and runs threads on [default: 1 for CPU workers, "
                          "the node's cores shared among its GPU workers]. One core per worker scales best; more "
                          "cores per worker finish a single large image sooner."),
        click.option("--images-per-worker", type=click.IntRange(min=1), default=None,
                     help="Images each worker holds at once: they decode and encode side by side while one at a "
                          "time takes the model stage [default: 1 for CPU workers, one per core for GPU workers]."),
        click.option("--address", envvar="RAY_ADDRESS", default=None,
                     help="Join an existing Ray cluster (also RAY_ADDRESS); default: an embedded local Ray."),
        click.option("--ledger", "ledger_dir", default=None, type=click.Path(file_okay=False),
                     help="Ledger folder to write (default <out>/ledger)."),
        click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="Checkpoint (own format or official NeurOp .pth). Default: the shipped weights."),
        click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
                     help="Refuse images larger than this before decoding them."),
        click.option("--retries", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Attempts per image when its worker dies."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--executor", type=click.Choice(["auto", "local", "ray"]), default="auto", show_default=True,
                     help="Where images are processed. auto: in this process for jobs of at most 16 images that "
                          "give no --address/RAY_ADDRESS and no worker options (no Ray start-up), else on Ray."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def search_options(fn):
    """The models' per-run settings (run, eval): the aesthetic model's search, the network retouchers' way to
    full resolution."""
    decorators = [
        click.option("--full-res", type=click.Choice(["guided", "tiles"]), default=None,
                     help="coarse-to-fine, deep-symmetric: guided = the network on a working copy, its change carried "
                          "to full resolution by a fitted bilateral grid (fast); tiles = the network on every pixel, in "
                          "overlapping tiles (exact, slow) [guided; BENCHMARKS.md compares them]."),
        click.option("--guide", default=None, type=click.Path(dir_okay=False, exists=True),
                     help="aesthetic: score with this guide file instead of the checkpoint's own (a NIMA VGG16 or "
                          "ranking-cnn state dict; README, 'Aesthetic-guided filters')."),
        click.option("--search-steps", type=click.IntRange(min=0), default=None,
                     help="aesthetic: gradient steps of the per-image search [20]."),
        click.option("--search-lr", type=click.FloatRange(min=0), default=None,
                     help="aesthetic: the search's learning rate [3e-5; the seed's 1e-3 overshoots with the shipped guide]."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _model_options(guide, search_steps, search_lr, full_res=None) -> dict:
    """The model options given on the command line (the model checks and pins them when it is configured)."""
    options = {"guide": os.path.abspath(guide) if guide else None, "search_steps": search_steps,
               "search_lr": search_lr, "full_res": full_res}
    return {k: v for k, v in options.items() if v is not None}


def _job_options(out, workers, cpus_per_worker, images_per_worker, address, ledger_dir, weights, max_pixels, retries,
                 device, no_progress, executor, settings):
    from jobs.run import JobOptions
    return JobOptions(out=out, weights=weights, settings=settings, workers=workers,
                      cpus_per_worker=cpus_per_worker, images_per_worker=images_per_worker, address=address,
                      ledger=ledger_dir, max_pixels=max_pixels, max_attempts=retries, device=device,
                      progress=not no_progress, executor=executor)


def _summary(result, start_note: str = "") -> None:
    o = result.outcome
    rate = o.images / o.seconds if o.seconds > 0 else 0.0
    for e in o.errors or []:
        click.echo(f"failed: {e}", err=True)
    for w in o.warnings or []:
        click.echo(f"warning: {w}", err=True)
    startup = f" after {o.startup_seconds:.1f} s worker start-up" if o.startup_seconds >= 0.05 else ""
    click.echo(f"{o.images} images: {o.ok} ok, {o.error} failed, {o.skipped} skipped in {o.seconds:.1f} s "
               f"({rate:.2f} images/s){startup}{start_note}; run {result.run_id}, ledger {result.ledger}")
    if o.worker_restarts:
        click.echo(f"{o.worker_restarts} worker(s) died and were replaced", err=True)
    if o.error:
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retouch-batch")
def main():
    """Batch retouching of RAW and 16-bit photo archives with learned colour operators, on Ray."""


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@job_options
@click.option("--format", "output_format", type=click.Choice(list(OUTPUT_FORMATS)), default="tiff16", show_default=True)
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--strip-metadata", is_flag=True,
              help="Outputs carry no metadata but their ICC profile: no EXIF, IPTC, XMP or GPS of the source and "
                   "no edit record (an --xmp-sidecar still holds the edit).")
@click.option("--xmp-sidecar", is_flag=True,
              help="Also write the edit (and the job that wrote the file) as <output>.xmp beside each output.")
@click.option("--tiff-compression", type=click.Choice(TIFF_CODECS), default=None,
              help="16-bit TIFF codec (default: none, the fastest; see BENCHMARKS.md).")
@click.option("--lut-size", type=click.IntRange(2, 129), default=DEFAULT_LUT_SIZE, show_default=True,
              help="3D LUT points per axis for full-resolution rendering.")
@click.option("--half-size", is_flag=True, help="Demosaic RAW at half size (faster, half the resolution).")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs are already current.")
@click.option("--model", default=None, metavar="NAME",
              help=f"{MODEL_HELP} Default: the one --weights holds, else neurop.")
@search_options
@user_errors
def run(manifest, out, workers, cpus_per_worker, images_per_worker, address, ledger_dir, weights, max_pixels, retries,
        device, no_progress, executor, output_format, quality, strip_metadata, xmp_sidecar, tiff_compression,
        lut_size, half_size, overwrite, model, full_res, guide, search_steps, search_lr):
    """Retouch every image of MANIFEST (CSV or Parquet with a `path` column) into --out, with a ledger."""
    from jobs.run import run_job
    from jobs.worker import DEFAULT_TIFF_COMPRESSION, RenderSettings
    settings = RenderSettings(output_format, quality, strip_metadata, lut_size,
                              tiff_compression or DEFAULT_TIFF_COMPRESSION, half_size,
                              json.dumps(_model_options(guide, search_steps, search_lr, full_res)),
                              xmp_sidecar=xmp_sidecar)
    opts = _job_options(out, workers, cpus_per_worker, images_per_worker, address, ledger_dir, weights, max_pixels,
                        retries, device, no_progress, executor, settings)
    opts.overwrite = overwrite
    opts.model = model
    result = run_job(manifest, opts, log=lambda m: click.echo(m, err=True))
    _summary(result, " (resumed)" if result.resumed else "")


@main.command()
@click.argument("ledger", type=click.Path(file_okay=False))
@job_options
@click.option("--set", "set_ops", multiple=True, metavar="OP=VALUE", help="Set an operator's strength for every image.")
@click.option("--shift", "shift_ops", multiple=True, metavar="OP=DELTA", help="Add DELTA to an operator's strength.")
@click.option("--edits", type=click.Path(dir_okay=False), help="CSV: image_id plus one column per operator.")
@click.option("--run", "run_id", default=None, help="Only this run of the ledger.")
@click.option("--format", "output_format", type=click.Choice(list(OUTPUT_FORMATS)), default=None,
              help="Output format (default: the original run's).")
@user_errors
def rerender(ledger, out, workers, cpus_per_worker, images_per_worker, address, ledger_dir, weights, max_pixels,
             retries, device, no_progress, executor, set_ops, shift_ops, edits, run_id, output_format):
    """Re-render LEDGER's images from their sources with its strengths, adjusted; never re-predicts."""
    from jobs.rerender import rerender_job
    opts = _job_options(out, workers, cpus_per_worker, images_per_worker, address, ledger_dir, weights, max_pixels,
                        retries, device, no_progress, executor, None)
    result = rerender_job(ledger, opts, set_ops, shift_ops, edits, run_id, output_format,
                          log=lambda m: click.echo(m, err=True))
    _summary(result)


@main.command("export-luts")
@click.argument("ledger", type=click.Path(file_okay=False, exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder for the .cube files (each at its output's relative path, extension .cube).")
@click.option("--size", type=click.IntRange(2, 129), default=33, show_default=True, help="LUT points per axis.")
@click.option("--run", "run_id", default=None, help="Only this run of the ledger.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="The checkpoint the ledger was made with (default: the path its run recorded).")
@user_errors
def export_luts(ledger, out, size, run_id, weights):
    """Each image's edit as a .cube 3D LUT (retouchers that are a global colour function; others are skipped)."""
    from jobs.export_luts import export_luts as export
    export(ledger, out, size, run_id, weights, log=click.echo)


@main.command()
@click.argument("ledger", type=click.Path(file_okay=False, exists=True))
@click.option("--output", "-o", "dest", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@click.option("--run", "run_id", default=None, help="Only this run of the ledger.")
@click.option("--no-progress", is_flag=True, help="No progress bar while thumbnails are made.")
@user_errors
def report(ledger, dest, run_id, no_progress):
    """One self-contained HTML page to review LEDGER: runs, histograms, outliers, errors, before/after thumbnails."""
    from jobs.report import write_report
    write_report(ledger, dest, run_id, log=click.echo, show_progress=not no_progress)


@main.command()
@click.argument("ledger", type=click.Path(file_okay=False, exists=True))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1 (0: any free one).")
@click.option("--edits", "edits_path", default="edits.csv", show_default=True, type=click.Path(dir_okay=False),
              help="The edits file Save writes (for rerender --edits).")
@click.option("--run", "run_id", default=None, help="Only this run of the ledger.")
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="The checkpoint the ledger was made with (default: the path its run recorded).")
@user_errors
def edit(ledger, port, edits_path, run_id, weights):
    """A local web page (127.0.0.1 only) to review LEDGER's images and move their sliders by eye; Save writes an
    edits file for `rerender --edits`."""
    from jobs.editor import EditSession, serve
    session = EditSession(ledger, run_id, edits_path, weights)
    server = serve(session, port)
    click.echo(f"editing {len(session.images)} images of {session.ledger}: open http://127.0.0.1:{server.port}/ "
               f"(Ctrl-C to stop); Save writes {session.edits_path}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")


@main.command()
@click.argument("ledger", type=click.Path(file_okay=False))
@click.option("--verify", is_flag=True, help="Re-hash every output and source on disk.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@user_errors
def audit(ledger, verify, as_json):
    """Report per run what ran, with which model and strengths; --verify checks the files. Exit 1 if inconsistent."""
    from jobs.audit import audit as run_audit, format_report
    report = run_audit(ledger, verify)
    click.echo(json.dumps(report.to_dict(), indent=1, default=str) if as_json else format_report(report))
    sys.exit(0 if report.consistent else 1)


@main.group()
def ledger():
    """Maintain a ledger."""


@ledger.command()
@click.argument("path", type=click.Path(file_okay=False, exists=True))
@user_errors
def compact(path):
    """Merge each run's part files into one, without losing or changing a row (safe to interrupt and re-run)."""
    from jobs.ledger import compact as compact_ledger
    done = compact_ledger(path, log=click.echo)
    merged = [c for c in done if c.rows >= 0]
    click.echo(f"{path}: {len(merged)} run(s) compacted, {sum(c.parts for c in merged)} part files merged"
               + (f", {sum(c.orphans_removed for c in done)} leftover part(s) of an interrupted compaction removed"
                  if any(c.orphans_removed for c in done) else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """List the registered retouchers: their parameters (name, label, range, default) and shipped weights."""
    from pipeline.catalogue import catalogue, format_catalogue
    entries = catalogue()
    click.echo(json.dumps(entries, indent=1) if as_json else format_catalogue(entries))


@main.command()
@click.argument("folder", type=click.Path(file_okay=False), required=False)
@click.option("-o", "--output", "dest", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@click.option("--no-recursive", is_flag=True, help="Only the folder itself, not its subfolders.")
@click.option("--examples", is_flag=True, help="A manifest of real photos shipped by scikit-image, for a first run.")
@user_errors
def manifest(folder, dest, no_recursive, examples):
    """Write a manifest of every image under FOLDER (RAW, TIFF, JPEG, PNG)."""
    from manifests.manifest import example_photo_paths, scan_folder, write_manifest
    if examples == bool(folder):
        raise click.UsageError("give a FOLDER or --examples")
    paths = example_photo_paths() if examples else scan_folder(folder, recursive=not no_recursive)
    n = write_manifest(paths, dest, named=examples)
    click.echo(f"{n} images -> {dest}")


@main.command(name="eval")
@click.argument("pairs", type=click.Path())
@click.option("--weights", multiple=True, type=click.Path(dir_okay=False),
              help="Checkpoint(s) to evaluate side by side (default: the shipped weights).")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Retoucher(s) to evaluate with their shipped weights, side by side; repeatable.")
@click.option("--json", "as_json", is_flag=True)
@search_options
@user_errors
def eval_(pairs, weights, models, as_json, full_res, guide, search_steps, search_lr):
    """PSNR, SSIM and dE76 on PAIRS (input/ + target/ folders, or a CSV with input,target), and the patch histogram
    intersections of luminance, contrast and saturation with the targets (the aesthetic-guided seed's metric)."""
    from pipeline.evaluate import evaluate, find_pairs
    found = find_pairs(pairs)
    if full_res:
        raise click.UsageError("--full-res is a run option: eval scores the network on each whole pair image "
                               "(BENCHMARKS.md compares the two ways at full resolution)")
    options = _model_options(guide, search_steps, search_lr)
    results = ([evaluate(found, w, options=options) for w in weights]
               + [evaluate(found, retoucher=m, options=options) for m in models])
    results = results or [evaluate(found, options=options)]
    if as_json:
        out = [r.to_dict() for r in results]
        click.echo(json.dumps(out[0] if len(out) == 1 else out, indent=1))
        return
    for r in results:
        click.echo(f"\n{r.weights}")
        click.echo(f"  {'id':<12}{'PSNR':>8}{'SSIM':>8}{'dE76':>8}   (input PSNR)")
        for s in r.per_image:
            click.echo(f"  {s.id:<12}{s.psnr:8.2f}{s.ssim:8.4f}{s.delta_e:8.2f}   ({s.psnr_input:.2f})")
        click.echo(f"  {'mean':<12}{r.psnr:8.2f}{r.ssim:8.4f}{r.delta_e:8.2f}   ({r.psnr_input:.2f})  n={r.n}")
        hi, hin = r.histogram_intersection, r.histogram_intersection_input
        click.echo("  histogram intersection with the targets, luminance / contrast / saturation: "
                   + " / ".join(f"{hi[k]:.1f}" for k in hi) + " %  (input: "
                   + " / ".join(f"{hin[k]:.1f}" for k in hin) + " %)")


FINETUNE_ONLY = ("model", "baseline", "train_size", "init", "init_operators", "iters", "lr", "trainable", "val", "val_ids", "eval_every", "init_iters",
                 "photos", "teacher", "real_fraction")


@main.command()
@click.option("--pairs", "pairs", multiple=True, required=True, type=click.Path(exists=True),
              help="Pairs folder (input/ + target/) or pairs CSV; repeatable.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Training folder.")
@click.option("--recipe", type=click.Choice(["auto", "style", "finetune"]), default="auto", show_default=True,
              help="style: learn a look plus per-image strengths from a few pairs (picks its own settings); "
                   "finetune: gradient training of NeurOp's parameters (the options marked finetune). auto: finetune "
                   "when any fine-tuning option is given, else style.")
@click.option("--model", default=None, metavar="NAME",
              help="finetune: the retoucher to train from scratch (`retouch-batch models`) [--init's, else neurop].")
@click.option("--init", default=None, type=click.Path(dir_okay=False, exists=True),
              help="finetune: start from these weights (own or official NeurOp) [none: from scratch].")
@click.option("--init-operators", default=None, type=click.Path(dir_okay=False, exists=True),
              help="finetune: start the operators from the official init_renderer.pth instead of analytic operators "
                   "(--model neurop).")
@click.option("--iters", type=click.IntRange(min=0), default=None,
              help="finetune: iterations [1000]; 0 stops after operator initialization.")
@click.option("--lr", type=float, default=None, help="finetune: learning rate [5e-5].")
@click.option("--trainable", type=click.Choice(["all", "predictors", "heads", "operators"]), default=None,
              help="finetune: which parameters move (fewer overfit less on few pairs) [all].")
@click.option("--val", type=click.IntRange(min=0), default=None, help="finetune: pairs held out for validation [0].")
@click.option("--val-ids", default=None, help="finetune: comma-separated pair ids to hold out (instead of --val).")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="finetune: iterations between scores [100].")
@click.option("--init-iters", type=click.IntRange(min=0), default=None,
              help="finetune: operator-initialization iterations per operator, from scratch [2000].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--photos", multiple=True, type=click.Path(exists=True),
              help="finetune: unlabeled photos (folder or manifest): distort-and-recover pairs, or --teacher's "
                   "retouches.")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False, exists=True),
              help="finetune, with --photos: distil this model's retouches of the photos.")
@click.option("--real-fraction", type=click.FloatRange(0, 1), default=None,
              help="finetune, with --photos: share of iterations on the real pairs [0.5].")
@click.option("--coder", type=click.Choice(["learned", "haar"]), default=None,
              help="deep-symmetric: the shared encoder/decoder, a pretrained autoencoder or the Haar wavelet "
                   "[learned].")
@click.option("--cv", default=None, metavar="loo|K",
              help="Cross-validate the recipe instead of training once: leave-one-out over every pair ('loo') or "
                   "K folds; prints and writes (cv.json) bootstrap intervals of the per-pair gains.")
@click.option("--train-size", type=click.IntRange(min=32), default=None,
              help="finetune: shrink the training pairs to this long side (faster; validation stays full size).")
@click.option("--baseline", default=None, type=click.Path(dir_okay=False, exists=True),
              help="finetune, with --cv: the weights each held-out pair is compared with [--init].")
@click.option("--cv-repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --cv K: repeat K-fold with this many shuffles.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@user_errors
def train(pairs, out, recipe, seed, cv, cv_repeats, device, **finetune):
    """Learn a style or fine-tune a model from before/after pairs; writes best.pt (run --weights OUT/best.pt).

    `--model aesthetic` trains its aesthetic guide on the pairs (and --photos, if given), reporting its
    leave-one-out ranking accuracy."""
    if finetune.get("model") == "aesthetic":
        _photos_and_iters_only("aesthetic", "its guide's leave-one-out accuracy is always reported", cv, finetune)
        return _train_aesthetic(pairs, out, seed, finetune)
    if finetune.get("model") == "deep-symmetric":
        _photos_and_iters_only("deep-symmetric", "it learns from synthetic underexposure of the photos, holds out "
                               "every 5th, and scores the pairs", cv, finetune)
        return _train_deep_symmetric(pairs, out, seed, finetune)
    if finetune.get("coder"):
        raise click.UsageError("--coder belongs to --model deep-symmetric")
    if finetune.get("model") == "coarse-to-fine":
        _photos_and_iters_only("coarse-to-fine", "it learns from random colour casts of the photos, holds out "
                               "every 5th, and scores the pairs", cv, finetune)
        return _train_coarse_to_fine(pairs, out, seed, finetune)
    given = sorted(k for k in FINETUNE_ONLY if finetune[k] not in (None, ()))
    if recipe == "style" and given:
        options = ", ".join("--" + k.replace("_", "-") for k in given)
        raise click.UsageError(f"--recipe style picks its own settings; {options} belong to --recipe finetune")
    if recipe == "finetune" or (recipe == "auto" and given):
        _finetune(pairs, out, seed, cv, cv_repeats, device, finetune)
    else:
        _learn_style(pairs, out, seed, cv, cv_repeats)


def _photos_and_iters_only(model: str, why: str, cv, options) -> None:
    """Models with their own training recipe take --photos and --iters (and --pairs, --out, --seed) only."""
    extra = ["--" + k.replace("_", "-") for k in FINETUNE_ONLY
             if options[k] not in (None, ()) and k not in ("model", "photos", "iters")] + (["--cv"] if cv else [])
    if options.get("coder") and model != "deep-symmetric":
        extra.append("--coder")
    if extra:
        raise click.UsageError(f"--model {model} takes --photos and --iters only ({why}); not {', '.join(extra)}")


def _train_aesthetic(pairs, out, seed, options):
    from pipeline.guide import GuideTrainConfig, train_aesthetic
    r = train_aesthetic(list(options["photos"]), list(pairs), out, options["iters"] or GuideTrainConfig.steps, seed,
                        log=click.echo)
    click.echo(f"done in {r['seconds']:.0f} s: {out}/best.pt; leave-one-out ranking accuracy {r['ranking_accuracy']:.1%} "
               f"({out}/guide.json). Use it: retouch-batch run MANIFEST --weights {out}/best.pt")


def _train_from_photos(model, what, report, train_fn, pairs, out, seed, options, default_iters, **extra):
    """A model with its own recipe learning from --photos degraded at random (coarse-to-fine, deep-symmetric)."""
    if not options["photos"]:
        raise click.UsageError(f"--model {model} learns from --photos ({what})")
    r = train_fn(list(options["photos"]), list(pairs), out, options["iters"] or default_iters, seed, log=click.echo,
                 **extra)
    click.echo(f"done in {r['seconds']:.0f} s: {out}/best.pt ({out}/{report}). "
               f"Use it: retouch-batch run MANIFEST --weights {out}/best.pt")


def _train_coarse_to_fine(pairs, out, seed, options):
    from pipeline.models.coarse_to_fine import train_coarse_to_fine  # the refinement trains for twice --iters
    _train_from_photos("coarse-to-fine", "good photos, cast at random", "casts.json", train_coarse_to_fine, pairs, out,
                       seed, options, 300)


def _train_deep_symmetric(pairs, out, seed, options):
    from pipeline.models.deep_symmetric import train_deep_symmetric
    _train_from_photos("deep-symmetric", "good photos, underexposed at random", "dark.json", train_deep_symmetric,
                       pairs, out, seed, options, 1200, coder=options["coder"] or "learned")


def _learn_style(pairs, out, seed, cv, cv_repeats):
    from pipeline.style import cross_validate_style, learn_style
    from pipeline.train import load_pairs
    found = load_pairs(list(pairs))
    if cv:
        from pipeline.crossval import format_summary
        r = cross_validate_style(found, out, None, _cv_folds(cv), cv_repeats, seed, log=click.echo)
        click.echo(format_summary(r) + f"\n({out}/cv.json)")
        return
    click.echo(f"learning a style from {len(found)} pair(s)")
    r = learn_style(found, out, seed, log=click.echo)
    click.echo(f"done in {r['seconds']:.0f} s: recipe {r['recipe']['name']}; the pairs' PSNR {r['input_psnr']:.2f} "
               f"-> {r['training_psnr']:.2f} dB. Use it: retouch-batch run MANIFEST --weights {r['weights']}")


def _finetune(pairs, out, seed, cv, cv_repeats, device, options):
    import torch
    from pipeline.train import TrainConfig, train as run_training
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = {k: v for k, v in options.items() if v not in (None, ())}
    if "val_ids" in chosen:
        chosen["val_ids"] = [v for v in chosen["val_ids"].split(",") if v]
    cfg = TrainConfig(pairs=list(pairs), out=out, seed=seed, device=device,
                      **{k: list(v) if k == "photos" else v for k, v in chosen.items()})
    if cv:
        from pipeline.crossval import format_summary
        from pipeline.train import cross_validate
        r = cross_validate(cfg, _cv_folds(cv), cv_repeats, log=click.echo)
        click.echo(format_summary(r) + f"\n({out}/cv.json)")
        return
    result = run_training(cfg, log=click.echo)
    click.echo(f"done: {out}/best.pt (best {json.dumps(result['best'])}); {out}/last.pt after {cfg.iters} iterations")


def _cv_folds(cv: str) -> int | None:
    """'loo' -> None (leave-one-out), a number -> that many folds."""
    if cv.lower() == "loo":
        return None
    if not cv.isdigit() or int(cv) < 2:
        raise click.BadParameter("give 'loo' or a number of folds >= 2", param_hint="--cv")
    return int(cv)


@main.command()
@click.option("--sizes", default="0.5,2,12,24,50", show_default=True, help="Image sizes in megapixels.")
@click.option("--weights", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Checkpoint(s) to time; repeatable.")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Retoucher(s) to time with their shipped weights, side by side; repeatable. Default: neurop; "
                   "a model other than neurop is timed beside neurop.")
@click.option("--lut-size", type=click.IntRange(2, 129), default=DEFAULT_LUT_SIZE, show_default=True)
@click.option("--codecs", default="none,zstd,zlib", show_default=True, help="16-bit TIFF codecs to time.")
@click.option("--reference-max-mp", type=float, default=2.0, show_default=True,
              help="Also time the reference's full-resolution network up to this size (it is slow).")
@click.option("--photo", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Photo to scale to each size (default: scikit-image's astronaut).")
@click.option("--json", "json_path", default="bench.json", show_default=True, type=click.Path(dir_okay=False))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Also time the model stage on a GPU (auto: when torch sees one).")
@user_errors
def bench(sizes, weights, models, lut_size, codecs, reference_max_mp, photo, json_path, device):
    """Time and peak memory per image size and retoucher: decode, predict, prepare, apply, encode; the reference."""
    from manifests.manifest import example_photo_paths
    from pipeline.bench import run_bench
    photo = photo or next((p for p in example_photo_paths() if p.endswith("astronaut.png")), None)
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda, but torch sees no CUDA GPU")
    accelerator = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else None
    chosen = list(weights) + list(models)
    if models and "neurop" not in models and not weights:
        chosen.insert(0, "neurop")  # the reference every other retoucher is read against
    run_bench([float(x) for x in sizes.split(",")], chosen or [None], lut_size, tuple(codecs.split(",")), reference_max_mp,
              photo_path=photo, json_path=json_path, log=click.echo, device=accelerator)
    click.echo(f"-> {json_path}")


if __name__ == "__main__":
    main()
