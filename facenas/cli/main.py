"""The `facenas` command line: a thin Typer layer over the package's public functions.

Every flag maps to a config key (shown in its help), progress bars live here and nowhere else, and any
`FacenasError` becomes one red line and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from facenas import __version__
from facenas.errors import FacenasError

app = typer.Typer(name="facenas", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Global macro-micro NAS for compact face-recognition networks (arXiv 2502.03553).")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    # escaped: a message may hold brackets that are not markup (pip install 'facenas[ray]', a list of values)
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `fn`, turning facenas errors into one clear line and Ctrl-C into exit 130."""
    try:
        return fn(*args, **kwargs)
    except FacenasError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; run the same command with --resume to continue where it stopped")
        raise typer.Exit(130) from None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def load_run_config(config: Optional[Path], sets: Optional[List[str]], flags: dict[str, Any],
                    task_flags: Optional[dict[tuple[str, str], Any]] = None) -> Any:
    """Config file + `--set` + flags. `task_flags` maps (classification key, faces key) to a flag's value: the
    flag sets the key that the config's task reads (`--device` is `train.device` or `faces.train.device`)."""
    from facenas.config import apply_overrides, config_data, parse_config, parse_override

    overrides = dict(parse_override(s) for s in (sets or []))
    overrides.update({k: v for k, v in flags.items() if v is not None})
    data = config_data(config, overrides)
    faces = data.get("task") == "faces"
    apply_overrides(data, {keys[faces]: value for keys, value in (task_flags or {}).items()})
    return parse_config(data, str(config) if config is not None else "<defaults>")


@app.command()
def version() -> None:
    """Print facenas's version."""
    out.print(__version__)


@app.command()
def search(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config, e.g. configs/search/digits.yaml"),
    data_root: Optional[Path] = typer.Option(None, help="data.root: folder holding the dataset"),
    face_source: Optional[str] = typer.Option(None, help="faces.data.source: face image folder or RecordIO"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run.out: run directory (default runs/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="run.resume: continue the run in --out where it stopped"),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="run.retry_failed: with --resume, train failed candidates again"),
    seed: Optional[int] = typer.Option(None, help="seed: the run's seed (default from the config, 0)"),
    device: Optional[str] = typer.Option(None, help="train.device (faces.train.device for a face config): auto, "
                                                    "cpu, cuda, cuda:N"),
    executor: Optional[str] = typer.Option(None, help="run.executor: subprocess (default), inline or ray"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1,
                                          help="run.workers: candidates trained at once, ahead of the strategy where "
                                               "needed (same path and result as one worker)"),
    ray_address: Optional[str] = typer.Option(None, help="run.ray.address: join this Ray cluster (with --executor "
                                                         "ray; default: start a local one)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="search.strategy: egnas (default, the four "
                                           "phases) or random (the baseline: random architectures of the same "
                                           "space at a given cost)"),
    budget_from: Optional[Path] = typer.Option(None, "--budget-from", help="search.random.budget_from: with "
                                               "--strategy random, stop at the epochs x MACs and candidate time "
                                               "this egnas run directory (or journal.sqlite) spent"),
    download: Optional[bool] = typer.Option(None, "--download/--no-download",
                                            help="data.download: fetch torchvision datasets if missing"),
    sets: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                             help="any config key, e.g. --set search.depth.max=12"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log more"),
) -> None:
    """Run the four-phase search (depth, width, operations, kernels) and write best_arch.json; `--strategy random`
    runs the random-search baseline instead."""
    setup_logging(verbose)
    cfg = run_guarded(load_run_config, config, sets, {
        "data.root": str(data_root) if data_root else None, "faces.data.source": face_source,
        "run.out": str(out_dir) if out_dir else None,
        "run.resume": resume or None, "run.retry_failed": retry_failed or None, "seed": seed,
        "run.executor": executor, "run.workers": workers, "run.ray.address": ray_address,
        "search.strategy": strategy, "search.random.budget_from": str(budget_from) if budget_from else None,
        "data.download": download}, {("train.device", "faces.train.device"): device})
    from facenas.cli.progress import RichSearchEvents, print_search_summary
    from facenas.search.run import search_from_config

    what = (f"faces from {cfg.faces.data.source} ({cfg.faces.data.heldout_identities} held-out identities)"
            if cfg.task == "faces" else f"dataset {cfg.data.dataset} (protocol {cfg.data.protocol})")
    strategy_note = "random search (the baseline), " if cfg.search.strategy == "random" else ""
    out.print(f"facenas {__version__} search [bold]{cfg.name}[/]: {strategy_note}{what}, seed {cfg.seed}, run "
              f"directory {cfg.out_dir()}", highlight=False)
    with RichSearchEvents(console) as events:
        run = run_guarded(search_from_config, cfg, events=events)
    print_search_summary(out, run)


@app.command()
def replay(
    log: Path = typer.Argument(..., help="a log of the authors' runs (egnas-replay JSON or their Searchlog.txt)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a report"),
    workers: int = typer.Option(1, "--workers", "-w", min=1,
                                help="simulate this many workers: results arrive in the order of the logged times"),
) -> None:
    """Replay an authors' search log through facenas's strategy; exit 0 only on an exact match."""
    from facenas.search.replay import load_log
    from facenas.search.replay import replay as do_replay

    report = run_guarded(lambda: do_replay(load_log(log), workers))
    data = report.to_dict()
    if as_json:
        out.print_json(json.dumps(data))
    else:
        status = "[green]exact match[/]" if report.ok else "[red]DIVERGED[/]"
        out.print(f"{log.name}: {status}: {report.candidates_matched}/{len(report.log.candidates)} candidates "
                  f"matched", highlight=False)
        unit = "s" if report.timed else " units"
        out.print(f"  {report.workers} worker{'s' if report.workers > 1 else ''}: {report.parallel_seconds:,.0f}{unit} "
                  f"against {report.serial_seconds:,.0f}{unit} one after another (speedup {report.speedup:.2f}x); "
                  f"{report.wasted_seconds:,.0f}{unit} spent off the path"
                  + ("" if report.timed else " (units: epochs x M parameters; the log has no times)"), highlight=False)
        if report.result is not None:
            r = report.result
            out.print(f"  macro: depth {r.macro_depth}, width {r.macro_width}, epochs {r.macro_epochs}; "
                      f"micro width {r.micro_width}", highlight=False)
            out.print(f"  ops {''.join(map(str, r.ops))}  kernels {''.join(map(str, r.kernels))}", highlight=False)
        if report.divergence is not None:
            d = report.divergence
            out.print(f"  diverged at candidate {d.index}:\n    facenas proposed: {d.proposed}\n    log has:        "
                      f"  {d.logged}", highlight=False)
        for line in report.final_mismatches:
            out.print(f"  final result differs: {line}", highlight=False)
    raise typer.Exit(0 if report.ok else 1)


@app.command("train-final")
def train_final(
    arch: Path = typer.Option(..., "--arch", help="architecture JSON, e.g. runs/<name>/best_arch.json"),
    config: Path = typer.Option(..., "--config", "-c", help="the search's YAML config (data, training)"),
    data_root: Optional[Path] = typer.Option(None, help="data.root"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run.out: results go to <out>/final"),
    epochs: Optional[int] = typer.Option(None, help="final.epochs (paper: 600; EMNIST 50)"),
    resume: bool = typer.Option(False, "--resume", help="run.resume: continue from the last checkpoint"),
    seed: Optional[int] = typer.Option(None, help="seed"),
    device: Optional[str] = typer.Option(None, help="train.device"),
    sets: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="any config key"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train an architecture with the final protocol and report validation and test accuracy."""
    setup_logging(verbose)
    cfg = run_guarded(load_run_config, config, sets, {
        "data.root": str(data_root) if data_root else None, "run.out": str(out_dir) if out_dir else None,
        "final.epochs": epochs, "run.resume": resume or None, "seed": seed, "train.device": device})
    from facenas.cli.progress import RichEpochs
    from facenas.space.arch import Arch
    from facenas.train.final import train_final as do_train

    if not arch.is_file():
        fail(f"architecture file {arch} does not exist")
    try:
        architecture = Arch.from_json(arch.read_text())
    except FacenasError as exc:
        fail(f"{arch}: {exc}")
    with RichEpochs(console, cfg.final.epochs, f"final {architecture.short()}") as bar:
        report = run_guarded(do_train, architecture, cfg, on_epoch=bar.update)
    out.print_json(json.dumps({k: report[k] for k in ("arch_short", "params", "macs", "protocol", "epochs",
                                                      "best_val_acc", "test_acc", "report")}))


arch_app = typer.Typer(no_args_is_help=True, help="Architectures: show one, or draw random ones at a parameter budget.")
app.add_typer(arch_app, name="arch")


@arch_app.command("show")
def arch_info(
    path: Path = typer.Argument(..., help="architecture JSON"),
    input_size: Optional[int] = typer.Option(None, help="image side for MACs (default: the profile's)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show an architecture: layers, parameters and MACs."""
    from facenas.space.arch import OP_NAMES, Arch
    from facenas.space.count import count_macs, count_params

    if not path.is_file():
        fail(f"architecture file {path} does not exist")
    a = run_guarded(lambda: Arch.from_json(path.read_text()))
    info = {"arch": a.to_dict(), "short": a.short(), "params": count_params(a),
            "macs": count_macs(a, input_size)}
    if as_json:
        out.print_json(json.dumps(info))
        return
    from rich.table import Table

    table = Table(title=a.short())
    for col in ("layer", "op", "kernel", "stride", "in", "out"):
        table.add_column(col, justify="right")
    for spec in a.layers():
        table.add_row(str(spec.index), OP_NAMES[spec.op], str(spec.kernel), str(spec.stride), str(spec.c_in),
                      str(spec.c_out))
    out.print(table)
    out.print(f"parameters {info['params']:,} ({info['params'] / 1e6:.6f} M), MACs {info['macs']:,}")


@arch_app.command("random")
def arch_random(
    params: int = typer.Option(..., "--params", min=1, help="target parameter count, e.g. 466312"),
    seed: int = typer.Option(..., "--seed", min=0, help="the same seed draws the same architectures"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the search's YAML config: its profile, "
                                          "search.depth range and search.micro kernels (default: the face "
                                          "defaults, task: faces)"),
    count: int = typer.Option(1, "--count", min=1, help="distinct architectures to draw"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="a directory (random_<seed>_<k>.json each) or, with "
                                            "--count 1, a .json file (default: print one JSON line each)"),
    tolerance: float = typer.Option(0.03, "--tolerance", min=0.0, help="relative distance to --params allowed"),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms",
                                                   help="search.constraints.max_latency_ms: only architectures "
                                                        "this fast on the config's search.target (measured)"),
    max_macs: Optional[int] = typer.Option(None, "--max-macs", min=1, help="search.constraints.max_macs: only "
                                           "architectures within this many MACs"),
) -> None:
    """Draw random architectures of the search space at a parameter count: the baseline for a search's result.
    With a latency or MACs budget, the draws are uniform over the architectures inside it (the baseline for a
    constrained search)."""
    from rich.table import Table

    from facenas.config import load_config
    from facenas.space.arch import OP_CONV, Arch
    from facenas.space.count import count_macs, count_params
    from facenas.space.sample import sample_archs, space_from_config
    from facenas.train.evaluators import task_profile

    if out_path is not None and out_path.suffix == ".json" and count != 1:
        fail(f"--out {out_path} is one file; give a directory to write --count {count} architectures")
    if out_path is not None and out_path.suffix != ".json" and out_path.exists() and not out_path.is_dir():
        fail(f"--out {out_path} is a file; give a directory or a .json file")
    budget = {"search.constraints.max_latency_ms": max_latency_ms, "search.constraints.max_macs": max_macs}
    overrides = {**({"task": "faces"} if config is None else {}), **{k: v for k, v in budget.items() if v is not None}}
    cfg = run_guarded(load_config, config, overrides)
    space = run_guarded(lambda: space_from_config(cfg, task_profile(cfg)))
    latency: dict[Arch, float] = {}
    within = None
    if cfg.search.constraints.any():
        from facenas.export.latency import arch_latency
        from facenas.search.constraints import Limits

        def measured(arch: Arch) -> float:
            latency[arch] = arch_latency(arch, cfg.search.target).median_ms
            return latency[arch]

        limits = Limits(cfg.search.constraints, measured)
        within = lambda arch: limits.over(arch) is None  # noqa: E731
    archs = run_guarded(sample_archs, space, params, seed, count=count, tolerance=tolerance, within=within)

    source = f"{config} ({cfg.task})" if config is not None else "the face defaults (no -c)"
    console.print(f"space of {source}: {space.describe()}; target {params:,} parameters within "
                  f"{tolerance:.1%}, seed {seed}", highlight=False)
    table = Table()
    for col in ("#", "depth", "width", "params", "vs target", "MACs", "conv", "k>3", *(["ms"] if latency else [])):
        table.add_column(col, justify="right", no_wrap=True)
    for k, a in enumerate(archs):
        n = count_params(a)
        table.add_row(str(k), str(a.depth), str(a.width), f"{n:,}", f"{(n - params) / params:+.2%}",
                      f"{count_macs(a):,}", str(sum(o == OP_CONV for o in a.ops)), str(sum(s > 3 for s in a.kernels)),
                      *([f"{latency[a]:.3f}"] if latency else []))
    console.print(table)

    if out_path is None:
        for a in archs:
            out.print(a.to_json(), markup=False, highlight=False, emoji=False)
        return
    if out_path.suffix == ".json":
        paths = [out_path]
        out_path.parent.mkdir(parents=True, exist_ok=True)
    else:
        out_path.mkdir(parents=True, exist_ok=True)
        paths = [out_path / f"random_{seed}_{k}.json" for k in range(len(archs))]
    for path, a in zip(paths, archs):
        path.write_text(a.to_json(indent=2) + "\n")
        out.print(str(path), markup=False, highlight=False)


@arch_app.command("latency")
def arch_latency_cmd(
    path: Optional[Path] = typer.Argument(None, help="architecture JSON (e.g. a search's best_arch.json)"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="model.backbone: a hand design instead "
                                           "(mobilefacenet, iresnet18, ...), at the config's face profile"),
    backbone_params: Optional[int] = typer.Option(None, "--backbone-params", min=1, help="model.backbone_params: "
                                                  "scale --backbone to this many parameters"),
    backbone_width: Optional[float] = typer.Option(None, "--backbone-width", min=0.0, help="model.backbone_width"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="a config: its search.target and face "
                                          "profile (default: the face defaults)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=256, help="search.target.threads"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, max=1024, help="search.target.batch"),
    precision: Optional[str] = typer.Option(None, "--precision", help="search.target.precision: fp32 or int8"),
    repeats: Optional[int] = typer.Option(None, "--repeats", min=5, max=10_000, help="search.target.repeats"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure a network's latency on the search's target, as a constrained search measures a candidate: the
    figure to set search.constraints.max_latency_ms from (e.g. MobileFaceNet's at the size you deploy)."""
    from facenas.config import load_config
    from facenas.export.latency import arch_latency, arch_model, latency_report
    from facenas.models.checkpoint import describe_face_model
    from facenas.space.arch import Arch
    from facenas.train.face_job import backbone_spec

    if (path is None) == (backbone is None):
        fail("give an architecture JSON or --backbone NAME (one of the two)")
    if path is None and backbone_params is not None and backbone_width is not None:
        fail("--backbone-params and --backbone-width both set the width; give one")
    if path is not None and (backbone_params is not None or backbone_width is not None):
        fail("--backbone-params and --backbone-width scale a --backbone, not an architecture JSON")
    target_keys = {"threads": threads, "batch": batch, "precision": precision, "repeats": repeats}
    overrides: dict[str, Any] = {**({"task": "faces"} if config is None else {}),
                                 **{f"search.target.{k}": v for k, v in target_keys.items() if v is not None}}
    if backbone is not None:
        overrides.update({"model.backbone": backbone, "model.backbone_params": backbone_params,
                          **({"model.backbone_width": backbone_width} if backbone_width is not None else {})})
    cfg = run_guarded(load_config, config, overrides)
    if path is not None:
        if not path.is_file():
            fail(f"architecture file {path} does not exist")
        network: Any = run_guarded(lambda: Arch.from_json(path.read_text()))
    else:
        network = run_guarded(backbone_spec, cfg)
    info = describe_face_model(arch_model(network), network)
    latency = run_guarded(arch_latency, network, cfg.search.target)
    result = {"network": info.short, "params": info.params, "macs": info.macs,
              **latency_report(latency, cfg.search.target)}
    if as_json:
        out.print_json(json.dumps(result))
        return
    t = cfg.search.target
    out.print(f"{info.short}: {info.params:,} parameters, {info.macs / 1e6:.2f} MMACs at "
              f"{info.input_size}x{info.input_size}; {latency.median_ms:.3f} ms (interquartile range "
              f"{latency.spread_ms:.3f}) per call of {t.batch} on onnxruntime {result['onnxruntime_version']}, "
              f"{t.threads} thread(s), {t.precision}, median of {t.repeats} calls", highlight=False)


data_app = typer.Typer(no_args_is_help=True, help="Face datasets: inspect, find landmarks, build RecordIO and "
                                                  ".bin files.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    path: Path = typer.Argument(..., help="image folder, RecordIO folder or .rec, .bin, or LFW directory"),
    pairs: Optional[Path] = typer.Option(None, help="pairs.txt for an LFW directory (default: PATH/pairs.txt)"),
    decode_limit: Optional[int] = typer.Option(None, help="decode at most this many images (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Count images, identities or pairs, image sizes and channels, and list the problems found."""
    from facenas.data.faces.inspect import inspect_path

    report = run_guarded(inspect_path, path, pairs=pairs, decode_limit=decode_limit)
    if as_json:
        out.print_json(json.dumps(report))
        return
    for key, value in report.items():
        if key != "problems":
            out.print(f"{key:>20}: {value}", highlight=False)
    problems = report.get("problems", [])
    out.print(f"{'problems':>20}: {len(problems)}", highlight=False)
    for line in problems[:20]:
        out.print(f"  - {line}", highlight=False)
    if len(problems) > 20:
        out.print(f"  ... and {len(problems) - 20} more (use --json for all)")


@data_app.command("landmarks")
def data_landmarks(
    folder: Path = typer.Argument(..., help="image folder, one sub-folder per identity"),
    out_file: Path = typer.Option(..., "--out", help="the landmarks file to write (appended to: a second call "
                                  "continues)"),
    detector: str = typer.Option("mtcnn", help="'mtcnn' or a YuNet / SCRFD ONNX file, as `facenas serve` takes"),
    max_side: int = typer.Option(640, help="photos are downscaled to this side for detection"),
    score: float = typer.Option(0.5, help="smallest detection score taken as a face"),
) -> None:
    """Find the five landmarks of every photo (its largest face) for ArcFace alignment: a file for
    faces.data.landmarks, build-rec --landmarks and build-bin --landmarks."""
    from facenas.data.faces.detect import write_landmarks
    from facenas.serve.detectors import load_detector
    from facenas.serve.errors import NoFaceFound

    found = run_guarded(load_detector, detector, max_side, "auto", score)
    if not found.gives_landmarks:
        fail(f"detector {detector!r} gives boxes without landmarks; use mtcnn or a YuNet / SCRFD model")

    def find(rgb: Any) -> Any:
        try:
            return found.largest(rgb).landmarks
        except NoFaceFound:
            return None

    def progress(done: int, total: int) -> None:
        if done % 500 == 0 or done == total:
            console.print(f"{done} / {total} photos", highlight=False)

    report = run_guarded(write_landmarks, folder, out_file, find, progress).to_dict()
    out.print(f"{report['found']} photos newly aligned ({report['already_in_file']} already in {out_file}); "
              f"faces found in {100 * report['found_rate']:.2f} % of the readable photos; no face in "
              f"{len(report['no_face'])}, unreadable {len(report['unreadable'])}", highlight=False)
    for rel in (report["no_face"] + report["unreadable"])[:20]:
        out.print(f"  - {rel}", markup=False, highlight=False)


@data_app.command("build-rec")
def data_build_rec(
    folder: Path = typer.Argument(..., help="image folder, one sub-folder per identity"),
    out_dir: Path = typer.Argument(..., help="output folder for train.rec, train.idx and property"),
    size: Optional[int] = typer.Option(None, help="resize/align to this side (default: keep images as they are)"),
    channels: int = typer.Option(3, help="with --size: 3 (RGB) or 1 (grey)"),
    crop_fraction: float = typer.Option(1.0, help="with --size: centre crop share where no landmarks are given"),
    landmarks: Optional[Path] = typer.Option(None, help="'relative/path x1 y1 ... x5 y5' lines: align with these"),
    fmt: str = typer.Option("jpg", "--format", help="encoding of re-encoded images: jpg or png"),
    quality: int = typer.Option(95, help="JPEG quality"),
    skip_bad: bool = typer.Option(False, help="leave out unreadable images and report them"),
    overwrite: bool = typer.Option(False, help="replace an existing train.rec"),
) -> None:
    """Write an insightface RecordIO training set that insightface's own readers accept."""
    from facenas.data.faces.build import build_rec
    from facenas.data.faces.images import Preprocess
    from facenas.data.faces.sources import FolderSource

    def build() -> Any:
        source = FolderSource(folder, landmarks_file=landmarks, skip_empty=skip_bad)
        prep = Preprocess(size=size, channels=channels, crop_fraction=crop_fraction) if (size or landmarks) else None
        if prep is None and landmarks:
            prep = Preprocess(channels=channels, crop_fraction=crop_fraction)
        return build_rec(source, out_dir, prep=prep, fmt="." + fmt.lstrip("."), quality=quality,
                         skip_bad=skip_bad, overwrite=overwrite), source.problems

    report, problems = run_guarded(build)
    out.print_json(json.dumps({**report.to_dict(), "skipped": report.skipped + problems, "out": str(out_dir)}))


@data_app.command("build-bin")
def data_build_bin(
    out_file: Path = typer.Argument(..., help="the .bin to write"),
    lfw_dir: Optional[Path] = typer.Option(None, help="an LFW directory (with --pairs)"),
    pairs: Optional[Path] = typer.Option(None, help="LFW pairs.txt"),
    folder: Optional[Path] = typer.Option(None, help="or an image folder: pairs are drawn from its identities"),
    pairs_per_fold: int = typer.Option(300, help="with --folder: matched (and mismatched) pairs per fold"),
    folds: int = typer.Option(10, help="with --folder: folds"),
    size: int = typer.Option(112, help="side of the stored crops"),
    crop_fraction: float = typer.Option(1.0, help="centre crop share where no landmarks are given"),
    landmarks: Optional[Path] = typer.Option(None, help="landmarks file: align with the ArcFace template"),
    fmt: str = typer.Option("png", "--format", help="png (lossless) or jpg"),
    seed: int = typer.Option(0, help="seed for drawing pairs from a folder"),
) -> None:
    """Write an insightface verification .bin from LFW + pairs.txt or from an image folder."""
    from facenas.data.faces.images import Preprocess
    from facenas.data.faces.pairs import load_pair_images, pairs_from_faces, parse_pairs, write_bin
    from facenas.data.faces.sources import FolderSource, materialize, read_landmarks_file

    prep = Preprocess(size=size, crop_fraction=crop_fraction)

    def build() -> Any:
        if lfw_dir is not None:
            if pairs is None:
                fail("--lfw-dir needs --pairs (the pairs.txt file)")
            table = read_landmarks_file(landmarks, lfw_dir) if landmarks else None
            pair_set = load_pair_images(parse_pairs(pairs, lfw_dir), prep, out_file.stem, table, lfw_dir)
        elif folder is not None:
            faces = materialize(FolderSource(folder, landmarks_file=landmarks), None, prep).faces
            pair_set = pairs_from_faces(faces, pairs_per_fold, folds=folds, seed=seed, name=out_file.stem)
        else:
            fail("give --lfw-dir with --pairs, or --folder")
        write_bin(out_file, pair_set.images, pair_set.issame, fmt="." + fmt.lstrip("."))
        return pair_set

    pair_set = run_guarded(build)
    out.print_json(json.dumps({"out": str(out_file), "pairs": len(pair_set), "matched": int(pair_set.issame.sum()),
                               "size": size}))


@app.command()
def train(
    arch: Optional[Path] = typer.Option(None, "--arch", help="architecture JSON from a face search (or --backbone)"),
    config: Path = typer.Option(..., "--config", "-c", help="face config, e.g. configs/train/faces-synthetic.yaml"),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="model.backbone: a hand-designed baseline instead"
                                           " of --arch: mobilefacenet, iresnet18, iresnet50 or timm:<name>"),
    backbone_width: Optional[float] = typer.Option(None, "--backbone-width",
                                                   help="model.backbone_width: channel width multiplier"),
    backbone_params: Optional[int] = typer.Option(None, "--backbone-params", help="model.backbone_params: choose "
                                                  "the width whose parameter count is closest to this"),
    face_source: Optional[str] = typer.Option(None, help="faces.data.source: face image folder or RecordIO"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run.out: run directory"),
    resume: bool = typer.Option(False, "--resume", help="run.resume: continue from checkpoints/last.pt"),
    epochs: Optional[int] = typer.Option(None, help="faces.train.epochs"),
    seed: Optional[int] = typer.Option(None, help="seed"),
    device: Optional[str] = typer.Option(None, help="faces.train.device"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="faces.train.gpus: train on N processes of this machine "
                                       "(torchrun + DDP, one per GPU; with --device cpu, N gloo processes)"),
    sets: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="any config key"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a face architecture (or a hand-designed backbone) with ArcFace/CosFace; checkpoints, verification,
    TensorBoard and CSV logs. `--gpus N` (or torchrun yourself, for several machines) trains data-parallel."""
    setup_logging(verbose)
    cfg = run_guarded(load_run_config, config, sets, {
        "run.out": str(out_dir) if out_dir else None, "run.resume": resume or None, "faces.data.source": face_source,
        "faces.train.epochs": epochs, "seed": seed, "faces.train.device": device, "model.backbone": backbone,
        "model.backbone_width": backbone_width, "model.backbone_params": backbone_params, "faces.train.gpus": gpus})
    from facenas.cli.progress import RichEpochs
    from facenas.space.arch import Arch
    from facenas.train.distributed import launch_local, launched, world_from_env
    from facenas.train.face_job import train_faces

    name = cfg.model.backbone if cfg.task == "faces" else None
    if arch is not None and name is not None:
        fail(f"--arch and a backbone (model.backbone: {name}) both given; train one of them")
    if arch is None and name is None:
        fail("nothing to train: give --arch FILE (an architecture from a face search) or --backbone NAME "
             "(mobilefacenet, iresnet18, iresnet50 or timm:<name>)")
    architecture = None
    if arch is not None:
        if not arch.is_file():
            fail(f"architecture file {arch} does not exist")
        architecture = run_guarded(lambda: Arch.from_json(arch.read_text()))
    if cfg.task == "faces" and cfg.faces.train.gpus > 1 and not launched():
        code = run_guarded(launch_local, cfg, arch.resolve() if arch is not None else None, verbose=verbose)
        raise typer.Exit(code)
    label = architecture.short() if architecture is not None else name
    if not world_from_env().is_main:  # the other ranks of a DDP run train quietly; rank 0 reports
        run_guarded(train_faces, architecture, cfg)
        return
    with RichEpochs(console, cfg.faces.train.epochs, f"train {label}") as bar:
        report = run_guarded(train_faces, architecture, cfg, on_epoch=bar.update)
    out.print_json(json.dumps({k: report[k] for k in ("arch_short", "params", "macs", "epochs", "heldout_accuracy",
                                                      "best_heldout_accuracy", "xnorm", "benchmarks", "model")}))


@app.command("eval")
def evaluate(
    model: Path = typer.Option(..., "--model", help="facenas checkpoint / model.pt, or a recognition .onnx"),
    lfw_dir: Optional[Path] = typer.Option(None, help="LFW directory (Name/Name_0001.jpg)"),
    pairs: Optional[Path] = typer.Option(None, help="LFW pairs.txt"),
    bins: Optional[List[Path]] = typer.Option(None, "--bin", help="insightface .bin file(s), e.g. cfp_fp.bin"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON"),
    plot: Optional[Path] = typer.Option(None, help="write a ROC plot (PNG)"),
    save_embeddings: Optional[Path] = typer.Option(None, help="write the embeddings (.npz)"),
    crop_fraction: float = typer.Option(1.0, help="centre crop share without landmarks (raw 250x250 LFW: ~0.5)"),
    landmarks: Optional[Path] = typer.Option(None, help="landmarks file for the LFW directory: align with them"),
    batch_size: int = typer.Option(128, help="images per forward pass"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
) -> None:
    """Benchmark a model with the insightface verification protocol on LFW and .bin sets."""
    from facenas.evaluate.run import PairSource, evaluate_model

    sources = []
    if lfw_dir is not None or pairs is not None:
        if lfw_dir is None or pairs is None:
            fail("--lfw-dir and --pairs go together")
        sources.append(PairSource("lfw", lfw_dir=lfw_dir, pairs=pairs))
    for b in bins or []:
        sources.append(PairSource(b.stem, bin=b))
    if not sources:
        fail("nothing to evaluate: give --lfw-dir with --pairs, and/or --bin FILE")
    from facenas.cli.progress import RichCounter

    with RichCounter(console) as counter:
        report = run_guarded(evaluate_model, model, sources, crop_fraction=crop_fraction, landmarks=landmarks,
                             batch_size=batch_size, device=device, json_out=json_out, plot=plot,
                             save_embeddings=save_embeddings, progress=counter.update)
    from facenas.evaluate.metrics import VerificationReport

    for name, r in report["sets"].items():
        summary = VerificationReport(**{k: r[k] for k in VerificationReport.__dataclass_fields__}).summary()
        out.print(f"{name}: {r['pairs']} pairs, {summary}", highlight=False)
        out.print(f"  thresholds (d^2) {min(r['thresholds']):.2f}..{max(r['thresholds']):.2f}, as cosine "
                  f"{min(r['thresholds_cosine']):.3f}..{max(r['thresholds_cosine']):.3f}", highlight=False)
    for key in ("plot", "embeddings"):
        if key in report:
            out.print(f"wrote {report[key]}", highlight=False)
    if json_out:
        out.print(f"wrote {json_out}", highlight=False)


@app.command()
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="facenas face checkpoint or model.pt"),
    out_file: Path = typer.Option(..., "--out", help="the .onnx file to write (its card goes next to it)"),
    opset: int = typer.Option(17, help="ONNX opset (11 or newer)"),
    quantize: Optional[str] = typer.Option(None, help="also write an int8 model: int8"),
    calibration_bin: Optional[Path] = typer.Option(None, help=".bin pair set to choose the threshold on "
                                                             "(default: the training run's held-out pairs)"),
    lfw_dir: Optional[Path] = typer.Option(None, help="or an LFW directory (with --pairs) to choose it on"),
    pairs: Optional[Path] = typer.Option(None, help="pairs.txt for --lfw-dir"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="time the exported model on onnxruntime as "
                                 "the search times a candidate (search.target) and put it on the card"),
    latency_threads: int = typer.Option(1, min=1, max=256, help="search.target.threads: onnxruntime intra-op "
                                        "threads"),
    latency_batch: int = typer.Option(1, min=1, max=1024, help="search.target.batch: faces per timed call"),
    latency_repeats: int = typer.Option(50, min=5, max=10_000, help="search.target.repeats: timed calls (the "
                                        "median is the latency, the interquartile range its spread)"),
) -> None:
    """Export to ONNX with insightface's recognition contract, verify it, time it, and write its model card."""
    from facenas.config import TargetConfig
    from facenas.export.onnx import calibration_from_run, export_onnx

    if quantize not in (None, "int8"):
        fail(f"--quantize {quantize!r}: only int8 is supported")
    # the float file (precision fp32); an int8 file's latency is in the quantised comparison
    target = TargetConfig(threads=latency_threads, batch=latency_batch, repeats=latency_repeats) if latency else None

    def run() -> Any:
        from facenas.data.faces.images import Preprocess
        from facenas.evaluate.run import PairSource, load_pair_source
        from facenas.models.checkpoint import check_model_file

        check_model_file(checkpoint)  # before anything about calibration: the real problem first
        if calibration_bin is not None or lfw_dir is not None:
            if lfw_dir is not None and pairs is None:
                fail("--lfw-dir needs --pairs")
            source = (PairSource(calibration_bin.stem, bin=calibration_bin) if calibration_bin else
                      PairSource(lfw_dir.name, lfw_dir=lfw_dir, pairs=pairs))  # type: ignore[union-attr]
            calibration, name = load_pair_source(source, Preprocess()), source.name
        else:
            calibration, name = calibration_from_run(checkpoint)
        return export_onnx(checkpoint, out_file, opset=opset, calibration=calibration, calibration_name=name,
                           quantize=quantize, target=target)

    report = run_guarded(run)
    if report.card_data.get("threshold") is None:
        console.print("[yellow]no calibration set[/]: the card has no threshold; `facenas serve` will need "
                      "--threshold (or export with --calibration-bin, or --lfw-dir with --pairs)")
    for warning in report.verification.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    out.print_json(json.dumps(report.to_dict()))


@app.command()
def serve(
    model: Optional[Path] = typer.Option(None, "--model", help="model: recognition ONNX (insightface's contract)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML with the settings below as keys"),
    host: Optional[str] = typer.Option(None, help="host: address to bind (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="port (default 8000)"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="workers: processes serving the "
                                          "port, sharing the gallery (default 1)"),
    db: Optional[Path] = typer.Option(None, help="db: SQLite gallery (default runs/serve/gallery.sqlite)"),
    threshold: Optional[float] = typer.Option(None, help="threshold: cosine, for verification and identification"),
    verify_threshold: Optional[float] = typer.Option(None, help="verify_threshold: cosine, for /v1/verify"),
    identify_threshold: Optional[float] = typer.Option(None, help="identify_threshold: cosine, for /v1/identify"),
    verify_far: Optional[float] = typer.Option(None, help="verify_far: verify at the card's point for this FAR "
                                               "(default: its best-accuracy threshold)"),
    identify_far: Optional[float] = typer.Option(None, help="identify_far: identify at the card's point for this "
                                                 "FAR (default: the lowest FAR the card records)"),
    api_keys_file: Optional[Path] = typer.Option(None, help="api_keys_file: one key per line"),
    allow_anonymous: Optional[bool] = typer.Option(None, "--allow-anonymous", help="allow_anonymous: serve "
                                                   "without keys on a public address or behind trusted proxies"),
    forwarded_allow_ips: Optional[str] = typer.Option(None, help="forwarded_allow_ips: trusted proxies (addresses "
                                                      "or CIDR networks, comma-separated) whose X-Forwarded-For "
                                                      "gives the client address"),
    metrics: Optional[str] = typer.Option(None, help="metrics: /metrics open, guarded (default) or off"),
    docs: Optional[str] = typer.Option(None, help="docs: /docs and /openapi.json open, guarded (default) or off"),
    detector: Optional[str] = typer.Option(None, help="detector: 'mtcnn' (default), 'haar' or a detector ONNX "
                                                      "(YuNet or SCRFD)"),
    rate_limit: Optional[int] = typer.Option(None, help="rate_limit_per_minute per key (0: unlimited)"),
    max_upload_mb: Optional[float] = typer.Option(None, help="max_upload_bytes, in MB (default 5)"),
    batch_wait_ms: Optional[float] = typer.Option(None, help="batch_wait_ms: longest wait for more faces to batch"),
    log_level: str = typer.Option("info", help="log level of the service and uvicorn (info logs a line per request)"),
) -> None:
    """Serve embeddings, verification and identification over HTTP (FastAPI + uvicorn)."""
    from facenas.config import load_config
    from facenas.serve.settings import ServeFile

    if config is None and model is None:
        fail("give --model (a recognition ONNX file) or a config with serve.model")
    flags = {"model": model, "host": host, "port": port, "workers": workers, "db": db, "threshold": threshold,
             "verify_threshold": verify_threshold, "identify_threshold": identify_threshold,
             "verify_far": verify_far, "identify_far": identify_far, "api_keys_file": api_keys_file,
             "allow_anonymous": allow_anonymous, "forwarded_allow_ips": forwarded_allow_ips, "metrics": metrics,
             "docs": docs, "detector": detector, "rate_limit_per_minute": rate_limit,
             "max_upload_bytes": int(max_upload_mb * 1024 * 1024) if max_upload_mb else None,
             "batch_wait_ms": batch_wait_ms}
    overrides = {f"serve.{k}": str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
    settings = run_guarded(load_config, config, overrides, model=ServeFile).serve
    import uvicorn

    from facenas.serve.app import check_port, create_app, preflight
    from facenas.serve.errors import GalleryError
    from facenas.serve.security import check_exposure, load_key_hashes

    run_guarded(check_exposure, settings, load_key_hashes(settings))  # a keyless public bind: refused first
    run_guarded(check_port, settings.host, settings.port)  # before the model loads: a taken port is one line
    level = getattr(logging, log_level.upper(), logging.INFO)  # the access log too: --log-level warning quiets it
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        preflight(settings)
    except (GalleryError, FacenasError, RuntimeError) as exc:
        fail(str(exc))
    # proxy_headers off: the app applies forwarded headers itself, from settings.forwarded_allow_ips only (uvicorn's
    # default would trust 127.0.0.1 always, or whatever FORWARDED_ALLOW_IPS says)
    common = dict(host=settings.host, port=settings.port, log_level=log_level, access_log=False, proxy_headers=False)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    from facenas.serve.app import LOG_LEVEL_ENV, SETTINGS_ENV
    from facenas.serve.workers import run_workers

    os.environ[SETTINGS_ENV], os.environ[LOG_LEVEL_ENV] = settings.model_dump_json(), log_level
    logging.getLogger("facenas.serve").info("serving on http://%s:%d with %d workers", settings.host, settings.port,
                                            settings.workers)
    run_workers(settings.workers, **common)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="where the demo writes its runs"),
    fresh: bool = typer.Option(False, help="start over instead of resuming a previous demo run"),
) -> None:
    """The main job on embedded data: a face search on synthetic faces, final training, LFW-protocol evaluation."""
    from facenas.cli.progress import RichSearchEvents
    from facenas.demo import run_demo

    with RichSearchEvents(console) as events:
        summary = run_guarded(run_demo, out_dir, resume=not fresh, events=events, log=out.print)
    out.print_json(json.dumps(summary))


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a search's run directory (journal.sqlite, config.yaml, summary.json)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="where to write (default: the run directory)"),
) -> None:
    """Report a search: trajectory.png (scores, decisions, noise band) and report.md (candidates, decisions)."""
    from facenas.search.report import write_report

    png, md = run_guarded(write_report, run_dir, out_dir)
    out.print(str(png), markup=False, highlight=False)
    out.print(str(md), markup=False, highlight=False)


@app.command()
def fidelity(
    config: Path = typer.Option(..., "--config", "-c", help="the search's YAML config"),
    archs: int = typer.Option(..., "--archs", min=2, help="architectures to train"),
    seed: int = typer.Option(0, "--seed", min=0, help="draws the architectures and their training seeds"),
    proxy_epochs: Optional[int] = typer.Option(None, "--proxy-epochs", min=1,
                                               help="proxy budget (default: search.depth.start_epochs)"),
    factor: int = typer.Option(4, "--factor", min=2, help="the long budget is factor x the proxy budget"),
    long_epochs: Optional[int] = typer.Option(None, "--long-epochs", min=2,
                                              help="the long budget in epochs (instead of --factor)"),
    params: Optional[int] = typer.Option(None, "--params", min=1, help="draw every architecture at this parameter "
                                         "count (default: spread over the sizes the search visits)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="where fidelity.json and fidelity.png go (default "
                                           "runs/<name>-fidelity); a second call with the same settings resumes"),
    face_source: Optional[str] = typer.Option(None, help="faces.data.source"),
    data_root: Optional[Path] = typer.Option(None, help="data.root (classification)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="run.retry_failed: train failed runs again"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="run.workers: trainings at once, "
                                          "each in a child process with its share of the CPU threads (or a GPU)"),
    sets: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="any config key"),
) -> None:
    """Check the proxy: rank correlation of scores at the search's budget and at factor x it, over N architectures."""
    cfg = run_guarded(load_run_config, config, sets, {
        "faces.data.source": face_source, "data.root": str(data_root) if data_root else None,
        "run.retry_failed": retry_failed or None, "run.workers": workers})
    from facenas.search.fidelity import fidelity_from_config

    folder = out_dir or Path("runs") / f"{cfg.name}-fidelity"

    def progress(index: int, budget: str, run: dict[str, Any]) -> None:
        score = "failed" if run["score"] is None else f"{run['score']:.3f}"
        console.print(f"arch {index} {budget} ({run['epochs']} epochs): {score} ({run['wall_s']:.0f} s)",
                      highlight=False)

    try:
        data, json_path, png = run_guarded(fidelity_from_config, cfg, folder, archs=archs, seed=seed,
                                           proxy_epochs=proxy_epochs, factor=factor, params=params,
                                           long_epochs=long_epochs, on_run=progress)
    except typer.Exit as stop:
        if stop.exit_code == 130:  # run_guarded's hint names --resume; here the same command resumes
            console.print(f"the finished runs are in {folder}; run the same command to continue", highlight=False)
        raise
    from facenas.search.fidelity import table, untrained
    from facenas.train.metrics import TRAINED_BELOW

    s = data["settings"]
    for row in table(data):
        out.print(row, markup=False, highlight=False)
    stuck = untrained(data)
    if stuck:
        out.print(f"{len(stuck)} of {len(data['archs'])} architectures ended below {TRAINED_BELOW:.0f} % train "
                  f"accuracy at {s['long_epochs']} epochs (in bold): their scores say whether they trained, not how "
                  "good their architecture is", markup=False, highlight=False)
    out.print(f"{len(data['archs'])} architectures, {s['proxy_epochs']} against {s['long_epochs']} epochs:",
              highlight=False)
    for key, c in data["correlations"].items():
        tau, rho = c["kendall_tau"], c["spearman_rho"]
        out.print(f"  {key:22s} Kendall tau {'n/a' if tau is None else f'{tau:+.3f}'}, Spearman rho "
                  f"{'n/a' if rho is None else f'{rho:+.3f}'} ({c['n']} architectures)", highlight=False)
    out.print(str(json_path), markup=False, highlight=False)
    out.print(str(png), markup=False, highlight=False)


@app.command()
def noise(
    config: Path = typer.Option(..., "--config", "-c", help="the search's YAML config"),
    face_source: Optional[str] = typer.Option(None, help="faces.data.source"),
    data_root: Optional[Path] = typer.Option(None, help="data.root (classification)"),
    seeds: int = typer.Option(5, min=2, help="seeds per architecture"),
    epochs: Optional[int] = typer.Option(None, min=1, help="budget (default: the depth phase's first, "
                                                           "search.depth.start_epochs)"),
    search_budget: bool = typer.Option(False, "--search-budget", help="train each architecture for the epochs the "
                                       "search's macro phases give a net of its depth and width (deeper nets "
                                       "longer), the budget the search compares it at, instead of one budget"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON, each training as it "
                                                               "ends; the same command resumes a killed run"),
    workers: Optional[int] = typer.Option(None, "--workers", "--jobs", "-w", "-j", min=1, help="run.workers: "
                                          "trainings at once, each in a child process with its share of the CPU "
                                          "threads (or a GPU)"),
    sets: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY=VALUE", help="any config key"),
) -> None:
    """Measure the noise of the search's score (std over seeds) for search.noise.std."""
    cfg = run_guarded(load_run_config, config, sets, {
        "faces.data.source": face_source, "data.root": str(data_root) if data_root else None,
        "run.workers": workers})
    from facenas.search.evaluator import make_task
    from facenas.search.executor import make_pool
    from facenas.search.fidelity import write_json_atomically
    from facenas.search.noise import measure_noise, spread_architectures
    from facenas.search.run import training_fingerprint

    evaluator, profile = make_task(cfg)
    s = cfg.search
    archs = spread_architectures(s.depth.min, s.depth.max, s.width.min, s.width.max, profile)
    if search_budget and epochs:
        fail("--epochs and --search-budget both set the budget; give one")
    from facenas.search.random_search import macro_epochs

    budget: Any = (lambda arch: macro_epochs(s, arch.depth, arch.width)) if search_budget else (
        epochs or s.depth.start_epochs)
    # JSON-ready: one number, or each architecture's budget
    epochs_used: Any = {a.short(): budget(a) for a in archs} if search_budget else budget
    settings = {"config": training_fingerprint(cfg), "epochs": epochs_used,
                "seeds": seeds, "archs": [a.short() for a in archs]}
    done: list[dict[str, Any]] = []
    if json_out is not None and json_out.exists():
        previous = json.loads(json_out.read_text())
        if previous.get("settings") != settings:
            fail(f"{json_out} holds another measurement (other config, budget, seeds or architectures); choose "
                 "another --json to keep it")
        done = previous.get("runs", [])
        console.print(f"{len(done)} trainings already in {json_out}", highlight=False)

    def progress(arch: Any, seed: int, metrics: Any) -> None:
        last = metrics.epochs[-1].train_acc if metrics.epochs else float("nan")
        console.print(f"{arch.short()} seed {seed}: score {metrics.score:.3f}, train accuracy {last:.1f} % "
                      f"({metrics.wall_s:.0f} s)", highlight=False)

    def save(record: dict[str, Any]) -> None:
        done.append(record)
        write_json_atomically(json_out, {"config": str(config), "epochs": epochs_used, "seeds": seeds,
                                          "settings": settings, "runs": done})

    train = cfg.faces.train if cfg.task == "faces" else cfg.train
    pool = make_pool(cfg.run, evaluator, train.threads, train.device)
    report = run_guarded(measure_noise, evaluator, archs, list(range(seeds)), budget, on_run=progress, done=done,
                         on_record=save if json_out is not None else None, executor=pool)
    at = (f"each at its search budget ({', '.join(f'{e} epochs' for e in epochs_used.values())})" if search_budget
          else f"at {budget} epochs")
    out.print(f"score of this config {at}, over {seeds} seeds:", highlight=False)
    for arch in report.score.mean:
        out.print(f"  {arch}: {report.score.mean[arch]:.3f} +- {report.score.std[arch]:.3f} (std)", highlight=False)
    sn = report.score.signal_to_noise
    out.print(f"  pooled std {report.score.pooled_std:.3f}; std of the architecture means "
              f"{report.score.arch_mean_std:.3f} (signal / noise {sn if sn is None else round(sn, 2)})",
              highlight=False)
    out.print(f"  -> search.noise.std: {report.score.pooled_std:.3f}", highlight=False)
    if report.measures:
        out.print("other measures of the held-out people (pooled std, signal / noise):", highlight=False)
        for key, value in sorted(report.measures.items(), key=lambda kv: -(kv[1].signal_to_noise or 0)):
            out.print(f"  {key:22s} {value.pooled_std:7.3f} {value.signal_to_noise or 0:6.2f}", highlight=False)
    if json_out is not None:
        write_json_atomically(json_out, {"config": str(config), "epochs": epochs_used, "seeds": seeds,
                                          "settings": settings, **report.to_dict()})
        out.print(f"wrote {json_out}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
