"""`facenas fidelity`: does the search's short proxy budget rank architectures as a longer training does?

The search compares candidates trained for a few epochs; that only finds good networks if the short ranking agrees
with the long one. `run_fidelity` trains each architecture through the run's own evaluator (so it measures the score
the search compares) at the proxy budget and at `factor` times it, with the same seed for both, and reports
Kendall's tau and Spearman's rho between the two rankings: of the score, and for face evaluators of every other
held-out measure the epochs carry (`extra["heldout_*"]`, reduced the way the score is).

Which architectures: `choose_archs` draws them from exactly the choices the search could make (depth range, ops,
kernels; `facenas.space.sample`'s uniform draw with the width solved for a parameter count), keeping widths within
the search's own range (width.min to the depth phase's width): a network narrower or wider than any the search
trains says nothing about its ranking. Without a parameter count they are spread over the sizes the search visits:
targets spaced geometrically between the median size of a random draw at width.min and at the widest width, one
architecture per target, so the ranking covers the size differences the macro phases decide on. With `params` all
are drawn at that one count, as the micro phases compare them. Where the space is too coarse near a target (one
channel moves the count by more than 3 %), the tolerance widens to 10 % and then 25 %; every count is in the JSON.

Resumable: every finished training is written to the JSON at once (atomically), and a second call with the same
settings trains only what is missing, so a killed run loses at most the training it was in.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from facenas.config import Config
from facenas.errors import ArchError, ConfigError, SearchAborted
from facenas.search.evaluator import TRAINED_BELOW, Evaluator, Metrics, train_and_score
from facenas.search.executor import CandidateFailed, Executor, InlineExecutor, Pool, as_pool, train_all
from facenas.space.arch import Arch
from facenas.space.count import count_macs, count_params
from facenas.space.sample import MAX_TRIES, SearchSpace, draw_choices, solve_width

JSON_FILE = "fidelity.json"
PLOT_FILE = "fidelity.png"
TOLERANCES = (0.03, 0.10, 0.25)
BUDGETS = ("proxy", "long")
RunCallback = Callable[[int, str, dict[str, Any]], None]


# -- which architectures -----------------------------------------------------------------------------------------

def _seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _widths_ok(arch: Arch, widths: tuple[int, int]) -> bool:
    return widths[0] <= arch.width <= widths[1]


def size_targets(space: SearchSpace, widths: tuple[int, int], count: int, seed: int, draws: int = 200
                 ) -> list[int]:
    """`count` parameter counts spaced geometrically between the median size of a random draw at the narrowest and
    at the widest width of the search: sizes that random architectures of the search's widths reach."""
    rng = np.random.default_rng([seed, 0])
    choices = [draw_choices(space, rng) for _ in range(draws)]
    low, high = (float(np.median([count_params(c.with_width(w)) for c in choices])) for w in widths)
    return [int(round(t)) for t in np.geomspace(low, max(high, low), count)]


def _draw_new(space: SearchSpace, target: int, rng: np.random.Generator, avoid: set[Arch],
              widths: tuple[int, int]) -> Arch:
    """One random architecture at `target` within the search's widths and not in `avoid`, by the rejection sampling
    of `sample_archs`; the tolerance widens only where the space is too coarse near the target."""
    for tolerance in TOLERANCES:
        for _ in range(MAX_TRIES):
            arch, params = solve_width(draw_choices(space, rng), target)
            if abs(params - target) <= tolerance * target and _widths_ok(arch, widths) and arch not in avoid:
                return arch
    raise ArchError(f"no new architecture of {target:,} parameters (within {TOLERANCES[-1]:.0%}) and width "
                    f"{widths[0]}..{widths[1]} in {len(TOLERANCES) * MAX_TRIES:,} draws in this space "
                    f"({space.describe()}); choose another --params, or fewer --archs")


def choose_archs(space: SearchSpace, count: int, seed: int, *, widths: tuple[int, int],
                 params: Optional[int] = None) -> list[Arch]:
    """`count` distinct architectures of the space with widths in `widths`: spread over its sizes, or all at
    `params` (module doc). The same arguments give the same list."""
    if count < 2:
        raise ArchError(f"a ranking needs at least 2 architectures, got {count}")
    if params is not None and params < 1:
        raise ArchError(f"the parameter count must be >= 1, got {params}")
    rng = np.random.default_rng([seed, 1])
    targets = [params] * count if params is not None else size_targets(space, widths, count, seed)
    chosen: list[Arch] = []
    for target in targets:
        chosen.append(_draw_new(space, target, rng, set(chosen), widths))
    return chosen


# -- correlations ------------------------------------------------------------------------------------------------

def _num(x: Any) -> Optional[float]:
    """A JSON-safe float: NaN and infinities (no score, a constant ranking) become None."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def rank_correlation(xs: Sequence[Optional[float]], ys: Sequence[Optional[float]]) -> dict[str, Any]:
    """Kendall's tau and Spearman's rho (with p-values) over the pairs where both values are finite."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys) if _num(x) is not None and _num(y) is not None]
    out: dict[str, Any] = {"n": len(pairs), "kendall_tau": None, "kendall_p": None, "spearman_rho": None,
                           "spearman_p": None}
    if len(pairs) >= 2:
        a, b = np.array(pairs).T
        with warnings.catch_warnings():  # a constant ranking: no correlation, reported as None
            warnings.simplefilter("ignore")
            tau, rho = kendalltau(a, b), spearmanr(a, b)
        out.update(kendall_tau=_num(tau.statistic), kendall_p=_num(tau.pvalue),
                   spearman_rho=_num(rho.statistic), spearman_p=_num(rho.pvalue))
    return out


def measures_of(metrics: Metrics) -> dict[str, Optional[float]]:
    """Every `heldout_*` measure of a face run, reduced over the epochs as the score is (max, last, mean_last)."""
    from dataclasses import replace

    keys = [k for k in (metrics.epochs[-1].extra if metrics.epochs else {}) if k.startswith("heldout_")]
    out = {}
    for key in keys:
        epochs = tuple(replace(e, val_acc=float(e.extra.get(key, math.nan))) for e in metrics.epochs)
        out[key] = _num(Metrics(epochs, reduce=metrics.reduce, last_k=metrics.last_k).score)
    return out


def correlations(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Proxy against long ranking, of the score and of every measure both budgets report."""
    done = [e for e in entries if e.get("proxy") and e.get("long")]
    out = {"score": rank_correlation([e["proxy"]["score"] for e in done], [e["long"]["score"] for e in done])}
    keys = sorted({k for e in done for k in e["proxy"].get("measures", {})}
                  & {k for e in done for k in e["long"].get("measures", {})})
    for key in keys:
        out[key] = rank_correlation([e["proxy"]["measures"].get(key) for e in done],
                                    [e["long"]["measures"].get(key) for e in done])
    return out


# -- the runs ----------------------------------------------------------------------------------------------------

def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a kill while writing leaves the previous file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _load_previous(path: Path, settings: dict[str, Any]) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); delete it to start over") from None
    if data.get("settings") != settings:
        changed = sorted(k for k in {*settings, *data.get("settings", {})}
                         if data.get("settings", {}).get(k) != settings.get(k))
        raise ConfigError(f"{path} was written with other settings ({', '.join(changed)} differ); run with the "
                          "same ones to continue it, or choose another --out")
    return data


def run_fidelity(evaluator: Evaluator, archs: Sequence[Arch], proxy_epochs: int, long_epochs: int, *, seed: int,
                 path: str | Path, settings: Optional[dict[str, Any]] = None,
                 executor: Optional[Union[Executor, Pool]] = None, on_run: Optional[RunCallback] = None,
                 retry_failed: bool = False, max_consecutive_failures: int = 0) -> dict[str, Any]:
    """Train every architecture at both budgets (proxies first), writing each finished run to `path` at once.

    Runs already in `path` from a call with the same settings are not trained again; failed ones are, with
    `retry_failed`. A run that fails (NaN loss, an exception) is recorded with its error and left out of the
    correlations; `max_consecutive_failures` in a row (> 0) stop everything (`SearchAborted`: a broken setup, not
    bad architectures), as does a `FacenasError` other than a training error (missing data). `on_run(index,
    budget, run)` follows every training. `executor` may be a pool (`run.workers` > 1, Ray): its slots train that
    many runs at once, each written as it ends.
    """
    path = Path(path)
    settings = json.loads(json.dumps({**(settings or {}), "seed": seed, "proxy_epochs": proxy_epochs,
                                      "long_epochs": long_epochs, "archs": [a.short() for a in archs]}))
    data = _load_previous(path, settings) or {
        "settings": settings, "evaluator": evaluator.describe(),
        "archs": [{"index": i, "arch": a.short(), "params": count_params(a), "macs": count_macs(a), "spec": a.to_dict(),
                   "seed": _seed(seed, i), "proxy": None, "long": None} for i, a in enumerate(archs)],
        "correlations": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    todo = [(entry, budget, epochs) for budget, epochs in zip(BUDGETS, (proxy_epochs, long_epochs))
            for entry in data["archs"]
            if entry[budget] is None or (retry_failed and entry[budget]["status"] == "failed")]
    failures_in_a_row = 0

    def record(k: int, result: Union[Metrics, CandidateFailed]) -> None:
        nonlocal failures_in_a_row
        entry, budget, epochs = todo[k]
        if isinstance(result, CandidateFailed):
            run = {"epochs": epochs, "status": "failed", "score": None, "train_score": None, "measures": {},
                   "wall_s": result.wall_s, "error": result.error.splitlines()[0]}
        else:
            run = {"epochs": epochs, "status": "finished", "score": _num(result.score),
                   "train_score": _num(result.best_train), "measures": measures_of(result),
                   "wall_s": result.wall_s, "error": None}
        entry[budget] = run
        data["correlations"] = correlations(data["archs"])
        write_json_atomically(path, data)
        if on_run is not None:
            on_run(entry["index"], budget, run)
        failures_in_a_row = failures_in_a_row + 1 if run["error"] else 0
        if max_consecutive_failures and failures_in_a_row >= max_consecutive_failures:
            raise SearchAborted(f"{failures_in_a_row} trainings in a row failed (the last: {run['error']}); this "
                                "looks like a broken setup rather than bad architectures. Fix the cause, then "
                                "run the same command with --retry-failed")

    runs = [(archs[entry["index"]], epochs, entry["seed"]) for entry, _, epochs in todo]
    train_all(as_pool(evaluator, executor or InlineExecutor()), runs, record, phase="fidelity")
    return data


def untrained(data: dict[str, Any], budget: str = "long") -> list[dict[str, Any]]:
    """The architectures whose run at `budget` failed or ended below `TRAINED_BELOW` % train accuracy."""
    return [e for e in data["archs"] if e[budget] is not None
            and (e[budget]["train_score"] is None or e[budget]["train_score"] < TRAINED_BELOW)]


def table(data: dict[str, Any]) -> list[str]:
    """Markdown rows by depth: each architecture's size, full convolutions, and train accuracy / score at both
    budgets (train accuracy is the best epoch's, on the augmented training batches); untrained runs in bold."""
    s = data["settings"]

    def cell(run: Optional[dict[str, Any]]) -> str:
        if run is None:
            return ""
        if run["score"] is None:
            return f"failed ({run['error']})"
        return train_and_score(run["train_score"], run["score"])

    rows = [f"| architecture | params | MMACs | convs | train / score at {s['proxy_epochs']} epochs | "
            f"train / score at {s['long_epochs']} epochs |", "|---|---:|---:|---:|---|---|"]
    for e in sorted(data["archs"], key=lambda e: (e["spec"]["depth"], e["params"])):
        rows.append(f"| {e['arch']} | {e['params']:,} | {e['macs'] / 1e6:.1f} | {sum(e['spec']['ops'])} | "
                    f"{cell(e['proxy'])} | {cell(e['long'])} |")
    return rows


def plot_fidelity(data: dict[str, Any], path: Path, title: str) -> None:
    """Proxy score against long score, one point per architecture, Kendall's tau in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [e for e in data["archs"] if e["proxy"] and e["long"] and e["proxy"]["score"] is not None
            and e["long"]["score"] is not None]
    c = data["correlations"].get("score", {})
    s = data["settings"]
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    points = ax.scatter([e["proxy"]["score"] for e in done], [e["long"]["score"] for e in done],
                        c=[math.log10(e["params"]) for e in done], cmap="viridis", s=30, zorder=3)
    for e in done:
        ax.annotate(str(e["index"]), (e["proxy"]["score"], e["long"]["score"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if done:
        fig.colorbar(points, ax=ax, label="log10 parameters")

    def fmt(x: Optional[float]) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    ax.set_title(f"{title}\nKendall tau {fmt(c.get('kendall_tau'))}, Spearman rho {fmt(c.get('spearman_rho'))} "
                 f"({c.get('n', 0)} architectures)", fontsize=9)
    ax.set_xlabel(f"score at {s['proxy_epochs']} epochs (proxy)")
    ax.set_ylabel(f"score at {s['long_epochs']} epochs")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fidelity_from_config(config: Config, out: str | Path, *, archs: int, seed: int = 0,
                         proxy_epochs: Optional[int] = None, factor: int = 4, params: Optional[int] = None,
                         long_epochs: Optional[int] = None, executor: Optional[Union[Executor, Pool]] = None,
                         on_run: Optional[RunCallback] = None) -> tuple[dict[str, Any], Path, Path]:
    """The whole check for a search config: choose, train (resumably), correlate, plot; returns (data, json, png).

    The proxy budget defaults to the depth phase's first (`search.depth.start_epochs`); the long one is `factor`
    times it, or `long_epochs` (e.g. the 20 epochs of the backbone comparison's budget); `run.retry_failed`,
    `run.max_consecutive_failures` and `run.workers` / `run.executor` (several trainings at once, locally or on
    Ray) act as in a search.
    """
    from facenas.search.evaluator import make_task
    from facenas.search.executor import make_pool
    from facenas.search.run import training_fingerprint
    from facenas.space.sample import space_from_config

    if factor < 2:
        raise ConfigError(f"--factor must be at least 2, got {factor}")
    evaluator, profile = make_task(config)
    space = space_from_config(config, profile)
    w = config.search.width
    chosen = choose_archs(space, archs, seed, widths=(w.min, w.first), params=params)
    proxy = proxy_epochs or config.search.depth.start_epochs
    long = long_epochs or proxy * factor
    if long <= proxy:
        raise ConfigError(f"the long budget ({long} epochs) must exceed the proxy budget ({proxy})")
    folder = Path(out)
    train = config.faces.train if config.task == "faces" else config.train
    # the space is pinned by the list of architectures in the settings
    settings = {"config": training_fingerprint(config), "params": params,
                "factor": None if long_epochs else factor}
    data = run_fidelity(evaluator, chosen, proxy, long, seed=seed, path=folder / JSON_FILE,
                        settings=settings, executor=executor or make_pool(config.run, evaluator, train.threads,
                                                                          train.device),
                        on_run=on_run, retry_failed=config.run.retry_failed,
                        max_consecutive_failures=config.run.max_consecutive_failures)
    png = folder / PLOT_FILE
    how = f"at {params:,} parameters" if params is not None else "spread over the space's sizes"
    plot_fidelity(data, png, f"{config.name}: {len(chosen)} architectures {how}")
    return data, folder / JSON_FILE, png
