"""The `facenas` command line: a thin Typer layer over the package's public functions.

Every flag maps to a config key (shown in its help), progress bars live here and nowhere else, and any
`FacenasError` becomes one red line and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from facenas import __version__
from facenas.errors import FacenasError

app = typer.Typer(name="facenas", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Global macro-micro NAS for compact face-recognition networks (arXiv 2502.03553).")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
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


def load_run_config(config: Optional[Path], sets: Optional[List[str]], flags: dict[str, Any]) -> Any:
    from facenas.config import load_config, parse_override

    overrides = dict(parse_override(s) for s in (sets or []))
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(config, overrides)


@app.command()
def version() -> None:
    """Print facenas's version."""
    out.print(__version__)


@app.command()
def search(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config, e.g. configs/search/digits.yaml"),
    data_root: Optional[Path] = typer.Option(None, help="data.root: folder holding the dataset"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run.out: run directory (default runs/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="run.resume: continue the run in --out where it stopped"),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="run.retry_failed: with --resume, train failed candidates again"),
    seed: Optional[int] = typer.Option(None, help="seed: the run's seed (default from the config, 0)"),
    device: Optional[str] = typer.Option(None, help="train.device: auto, cpu, cuda, cuda:N"),
    executor: Optional[str] = typer.Option(None, help="run.executor: subprocess (default) or inline"),
    download: Optional[bool] = typer.Option(None, "--download/--no-download",
                                            help="data.download: fetch torchvision datasets if missing"),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="any config key, e.g. --set search.depth.max=12"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log more"),
) -> None:
    """Run the four-phase search (depth, width, operations, kernels) and write best_arch.json."""
    setup_logging(verbose)
    cfg = run_guarded(load_run_config, config, sets, {
        "data.root": str(data_root) if data_root else None, "run.out": str(out_dir) if out_dir else None,
        "run.resume": resume or None, "run.retry_failed": retry_failed or None, "seed": seed,
        "train.device": device, "run.executor": executor, "data.download": download})
    from facenas.cli.progress import RichSearchEvents, print_search_summary
    from facenas.search.run import search_from_config

    out.print(f"facenas {__version__} search [bold]{cfg.name}[/]: dataset {cfg.data.dataset} "
              f"(protocol {cfg.data.protocol}), seed {cfg.seed}, run directory {cfg.out_dir()}", highlight=False)
    with RichSearchEvents(console) as events:
        run = run_guarded(search_from_config, cfg, events=events)
    print_search_summary(out, run)


@app.command()
def replay(
    log: Path = typer.Argument(..., help="a log of the authors' runs (egnas-replay JSON or their Searchlog.txt)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a report"),
) -> None:
    """Replay an authors' search log through facenas's strategy; exit 0 only on an exact match."""
    from facenas.search.replay import load_log
    from facenas.search.replay import replay as do_replay

    report = run_guarded(lambda: do_replay(load_log(log)))
    data = report.to_dict()
    if as_json:
        out.print_json(json.dumps(data))
    else:
        status = "[green]exact match[/]" if report.ok else "[red]DIVERGED[/]"
        out.print(f"{log.name}: {status}: {report.candidates_matched}/{len(report.log.candidates)} candidates "
                  f"matched", highlight=False)
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
    sets: Optional[List[str]] = typer.Option(None, "--set", help="any config key"),
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


@app.command("arch")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
