"""Does the face search find a better backbone than chance, random search, or a hand design of the same size?

One command answers everything a claim about the search needs, on the people neither the search nor training saw
(`faces.data.test_identities`; report.json `test_people`), `--seeds` seeds each, mean +- standard error over seeds:

* the search's result (`--arch RUN/best_arch.json`);
* random search's result at equal search cost (`--random-search RUN2/best_arch.json`, label `random-search`): the
  control a NAS method has to beat, since a search that only matches random search added nothing but its cost;
* `--random` architectures drawn from the same space at the result's parameter count (`facenas arch random`): what
  chance finds at that size, without any search;
* hand designs scaled to that count (`--baselines`, default MobileFaceNet and iResNet-18, via `--backbone-params`).
  A design that cannot shrink to the budget (iResNet-18's flatten-FC head alone outweighs a 16k-parameter chain)
  is trained at its smallest width, and the printout and JSON say so instead of pretending the sizes match;
* optionally an accuracy-against-size curve (`--size-curve 0.25,0.5,1,2,4`, multiples of the result's parameter
  count): per size one random architecture of the space and the result's own body scaled in width, trained at the
  same budget, so that the cost of the search's size choice is visible next to the choice of body.

Every model is trained identically (one train config); each training is a `facenas train` child process, `--jobs`
at a time with `--threads` each. A finished training is not trained again and an interrupted one resumes from its
checkpoint, so the same command continues a killed comparison (and a model whose training is identical to another's,
e.g. the curve's search body at x1, reuses that one's runs). Every row reports the final train accuracy beside the
test scores: a network that did not fit its training people says nothing about its architecture, so rows whose mean
train accuracy is below 50 % are flagged.

    python bench/face_compare.py --arch runs/search-lfw-dev/best_arch.json \
        --random-search runs/random-search-lfw-dev/best_arch.json --size-curve 0.25,0.5,1,2,4 \
        -c configs/train/faces-lfw-dev-compare.yaml --face-source ../shared/data/lfw-dev/images

Prints and writes bench/results/face_compare-<config name>.json: every training (test accuracy and its standard
error over the 10 folds, AUC, EER, TAR@FAR, held-out accuracy, final train accuracy, wall time), per model the mean
and standard error over seeds, the search's result against each other model (difference of means with the standard
error of the difference, Welch, and whether it exceeds 2 standard errors; and paired by seed, since a seed draws
the split every model of that seed shares), the search against random search spelt out, and the size curve (also
plotted to bench/results/face_size_curve-<config name>.png). `--latency` adds each
model's latency on the config's `search.target`, and `--set search.constraints.max_latency_ms=...` draws the random
nets inside that budget: the comparison a constrained search's result needs. `--dry-run` prints the plan (models,
sizes, parameter counts, which trainings are already done) and trains nothing; of a comparison under way (running
beside it, or stopped) it also prints the scores so far, each model over the seeds it has finished. A run folder
belongs to one comparison: a model's folder that holds another net's training is an error, never a silent reuse.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from facenas.config import load_config, parse_override
from facenas.errors import ArchError
from facenas.export.latency import arch_latency, latency_report
from facenas.models.backbones import backbone_param_count, match_width
from facenas.models.checkpoint import load_face_model
from facenas.search.constraints import limits_for
from facenas.search.random_search import Draws
from facenas.space.arch import Arch
from facenas.space.count import count_params
from facenas.space.sample import SearchSpace, sample_archs, solve_width, space_from_config
from facenas.train.face_job import backbone_spec, retarget
from facenas.train.metrics import TRAINED_BELOW  # a mean final train accuracy below it: the net did not train

MEASURES = ("accuracy", "auc", "eer")  # of report.json's test_people: accuracy and EER in %, AUC as a fraction
#: Hand designs compared by default: the two compact baselines of the face literature facenas builds.
DEFAULT_BASELINES = ("mobilefacenet", "iresnet18")
#: A baseline further than this (relative) from the target is reported as "not at the same size".
BASELINE_TOLERANCE = 0.10
#: Widening steps of the size curve's parameter tolerance where no draw meets the requested one.
CURVE_TOLERANCE_STEPS = (1, 2, 4, 8)
#: The most draws asked of `sample_archs` (by `draw_random`) or of random search's `Draws` (a few seconds of counts).
MAX_DRAWS = 4096
#: The smallest width multiplier `match_width` searches; a baseline at it is as small as it gets.
SMALLEST_WIDTH = float(inspect.signature(match_width).parameters["low"].default)
LARGEST_WIDTH = float(inspect.signature(match_width).parameters["high"].default)


# -- planning ------------------------------------------------------------------------------------------------------

def draw_random(space: SearchSpace, target: int, seed: int, want: int, tolerance: float,
                accept: Callable[[Arch], bool]) -> list[Arch]:
    """The first `want` architectures of `sample_archs(space, target, seed)` that `accept` keeps (fewer if the space
    has no more).

    `sample_archs` raises when it cannot deliver as many distinct draws as asked, but a shorter list is always a
    prefix of a longer one, so asking for ever more draws (and, once that fails, bisecting for the most it can
    give) finds the same first accepted architectures any large enough request would: those of earlier comparisons
    (resumed runs) stay the same.
    """
    good, bad = 0, None  # a count that worked, the smallest count known to fail
    got: list[Arch] = []
    count = max(1, 40 * want)
    while True:
        try:
            archs = sample_archs(space, target, seed, count=count, tolerance=tolerance)
        except ArchError:
            bad = count
        else:
            good = count
            got = [a for a in archs if accept(a)]
            if len(got) >= want:
                return got[:want]
        if bad is None:
            if count * 4 > MAX_DRAWS:
                return got
            count *= 4
        elif bad - good <= 1:
            return got
        else:
            count = (good + bad) // 2


def _arch_model(label: str, role: str, arch: Arch, path: Path, **extra: Any) -> dict[str, Any]:
    """A searched-space model: trained from its JSON file; `key` names its training (equal keys, equal runs)."""
    if not path.exists() or path.read_text() != arch.to_json() + "\n":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(arch.to_json() + "\n")
    return {"label": label, "role": role, "args": ["--arch", str(path)], "params": count_params(arch),
            "arch": arch.short(), "key": "arch:" + arch.to_json(), **extra}


def baseline_model(config_path: str, overrides: dict[str, Any], name: str, target: int,
                   tolerance: float = BASELINE_TOLERANCE) -> dict[str, Any]:
    """A hand design at the width whose parameter count is closest to `target`, trained with `--backbone-params`.

    Where no width reaches the target (below the smallest width, iResNet-18's case under ~60k parameters at
    56x56), the design is trained at its smallest (or largest) width with `--backbone-width` and the model says so
    (`at_target` False, `note`): a comparison that silently trained another size would credit the architecture
    with what its size did.
    """
    config = load_config(config_path, {**overrides, "model.backbone": name, "model.backbone_params": None})
    base = backbone_spec(config)
    assert base is not None
    try:
        spec = backbone_spec(load_config(config_path, {**overrides, "model.backbone": name,
                                                       "model.backbone_params": target}))
        assert spec is not None
        args = ["--backbone", name, "--backbone-params", str(target)]
        reachable = True
    except ArchError:
        ends = [replace(base, width=w) for w in (SMALLEST_WIDTH, LARGEST_WIDTH)]
        spec = min(ends, key=lambda s: abs(backbone_param_count(s) - target))
        args = ["--backbone", name, "--backbone-width", f"{spec.width:g}"]
        reachable = False
    params = backbone_param_count(spec)
    off = (params - target) / target
    at_target = abs(off) <= tolerance
    note = None
    if not at_target:
        how = (f"its {'smallest' if spec.width == SMALLEST_WIDTH else 'largest'} width (x{spec.width:g})"
               if not reachable else f"the closest width (x{spec.width:g})")
        note = (f"{name} cannot be scaled to {target:,} parameters: {how} has {params:,} ({off:+.0%}), "
                f"beyond the +-{tolerance:.0%} of a same-size comparison; trained and reported at that size")
    return {"label": name, "role": "baseline", "args": args, "params": params, "arch": spec.short(),
            "key": f"backbone:{name}:{spec.width!r}", "target_params": target, "width": spec.width,
            "relative_to_target": off, "at_target": at_target, "note": note}


def plan(config_path: str, arch_path: Path, overrides: dict[str, Any], random_count: int, random_seed: int,
         folder: Path, tolerance: float = 0.03, *, random_search: Optional[Path] = None,
         baselines: Sequence[str] = DEFAULT_BASELINES, random_size: str = "result"
         ) -> tuple[list[dict[str, Any]], int]:
    """The models to train (label, role, extra CLI arguments, parameters, ...) and the search result's count.

    Random architectures come from the search's own widths only (as `facenas fidelity` draws): a wider or narrower
    net is not of the space the search chose from at this size. Under the config's `search.constraints` (e.g.
    `--set search.constraints.max_latency_ms=0.8`, a constrained search's budget) they are drawn inside the budget,
    as `facenas arch random --max-latency-ms` draws. `random_size="budget"` draws them at any size inside the
    budget instead, as random search draws its candidates: the control for a constrained search, whose claim is
    the best net within the budget, not at one size.
    """
    config = load_config(config_path, overrides)
    found = retarget(Arch.from_json(arch_path.read_text()), config)
    target = count_params(found)
    models = [{"label": "search", "role": "search", "args": ["--arch", str(arch_path)], "params": target,
               "arch": found.short(), "key": "arch:" + found.to_json()}]
    if random_search is not None:
        rival = retarget(Arch.from_json(random_search.read_text()), config)
        models.append({"label": "random-search", "role": "random-search", "args": ["--arch", str(random_search)],
                       "params": count_params(rival), "arch": rival.short(), "key": "arch:" + rival.to_json(),
                       "relative_to_target": (count_params(rival) - target) / target})
    space, w = space_from_config(config, found.profile), config.search.width
    limits = limits_for(config.search.constraints, lambda a: arch_latency(a, config.search.target).median_ms)
    if random_count > 0 and random_size == "budget":
        if limits is None:
            raise SystemExit("--random-size budget draws inside search.constraints; set one (--set "
                             "search.constraints.max_latency_ms=...)")
        paths = [folder / "archs" / f"budget_{random_seed}_{k}.json" for k in range(random_count)]
        drawn = [Arch.from_json(p.read_text()) for p in paths if p.exists()]
        if len(drawn) < random_count:
            # measured latency decides which draws are inside, and it wavers near the budget: the draws are made
            # once and kept in the run folder, so that a resumed comparison trains the same nets
            draws, drawn = Draws(config.search, found.profile, random_seed, limits), []
            for index in range(MAX_DRAWS):
                arch = draws.candidate(index).arch
                if arch != found and arch not in drawn:
                    drawn.append(arch)
                if len(drawn) == random_count:
                    break
            else:
                raise SystemExit(f"only {len(drawn)} distinct random architectures other than the result inside "
                                 f"search.constraints in {MAX_DRAWS} draws; ask for fewer or widen the budget")
        for k, (arch, path) in enumerate(zip(drawn, paths)):
            models.append(_arch_model(f"random-{k}", "random", arch, path, drawn="within the budget"))
    elif random_count > 0:
        drawn = draw_random(space, target, random_seed, random_count, tolerance,
                            lambda a: a != found and w.min <= a.width <= w.first
                            and (limits is None or limits.over(a) is None))
        if len(drawn) < random_count:
            budget = " and search.constraints" if limits is not None else ""
            raise SystemExit(f"only {len(drawn)} random architectures at {target:,} parameters (+-{tolerance:.0%}) "
                             f"within widths {w.min}..{w.first}{budget}; ask for fewer or widen --tolerance")
        for k, arch in enumerate(drawn):
            models.append(_arch_model(f"random-{k}", "random", arch,
                                      folder / "archs" / f"random_{random_seed}_{k}.json"))
    for name in baselines:
        models.append(baseline_model(config_path, overrides, name, target))
    return models, target


def width_tiers(low: int, first: int, high: int) -> list[tuple[str, int, Optional[int]]]:
    """Width ranges a size-curve draw may take, narrowest first: the search's own widths, the config's width range
    where it is wider, then any width the sampler can solve (a size the search's widths cannot reach at all)."""
    tiers: list[tuple[str, int, Optional[int]]] = [("search", low, first)]
    if high != first:
        tiers.append(("config", low, high))
    tiers.append(("any", 1, None))
    return tiers


def tier_reachable(space: SearchSpace, low: int, high: Optional[int], target: int, tolerance: float) -> bool:
    """Whether any architecture of `space` with a width in low..high can come within `tolerance` of `target`.

    Drawing thousands of architectures only to find that none fits takes seconds per size; the bounds take
    microseconds. With at least 2 channels a layer, a separable layer has fewer parameters than a full one, a
    larger kernel and one more layer add parameters, so the smallest network at width `low` is the shallowest
    all-separable one with the smallest kernel, and the largest at `high` the deepest all-conv one with the largest
    kernel (both ops are tried, in case). Below 2 channels the bounds are not claimed: the tier is tried."""
    if low < 2:
        return True
    depths = range(space.depth_min, space.depth_max + 1)
    floor = min(count_params(Arch.uniform(low, d, space.profile, op, min(space.kernels))) for d in depths
                for op in space.ops)
    if target * (1 + tolerance) < floor:
        return False
    if high is None:
        return True
    ceiling = max(count_params(Arch.uniform(high, d, space.profile, op, max(space.kernels))) for d in depths
                  for op in space.ops)
    return target * (1 - tolerance) <= ceiling


def plan_size_curve(config_path: str, arch_path: Path, overrides: dict[str, Any], multiples: Sequence[float],
                    random_seed: int, folder: Path, tolerance: float = 0.03) -> list[dict[str, Any]]:
    """Per multiple of the search result's parameter count, one random architecture of the space drawn at that
    size and the result's own body scaled in width to it.

    The random draw is `sample_archs`, as `plan` draws (same seed; at x1 it is `random-0`), within the search's
    widths where that is possible; otherwise the restriction is widened (recorded as `width_restriction`), then the
    tolerance (`tolerance`), since a network 4x smaller than the search's smallest cannot have its widths. The
    scaled body is `solve_width`: only the width moves, so along that line only size changes, not the body, and
    its count is as close as one channel allows (`params` against `target_params`).
    """
    config = load_config(config_path, overrides)
    found = retarget(Arch.from_json(arch_path.read_text()), config)
    target = count_params(found)
    space, w = space_from_config(config, found.profile), config.search.width
    models: list[dict[str, Any]] = []
    for m in multiples:
        size = max(1, round(m * target))
        scaled, scaled_params = solve_width(found, size)
        common = {"multiple": m, "target_params": size}
        drawn: Optional[tuple[Arch, str, float]] = None
        tiers = width_tiers(w.min, w.first, w.max)
        # the widths widen first, at the requested tolerance; the tolerance only where no width at all meets it
        tries = [(tier, tolerance) for tier in tiers] + [(tiers[-1], tolerance * s) for s in CURVE_TOLERANCE_STEPS[1:]]
        for (restriction, low, high), tol in tries:
            if not tier_reachable(space, low, high, size, tol):
                continue
            hits = draw_random(space, size, random_seed, 1, tol,
                               lambda a, lo=low, hi=high, body=scaled: a not in (found, body) and lo <= a.width
                               and (hi is None or a.width <= hi))
            if hits:
                drawn = (hits[0], restriction if high is None else f"{restriction} ({low}..{high})", tol)
                break
        if drawn is None:
            raise SystemExit(f"no random architecture of the space at {size:,} parameters (x{m:g}), even at any "
                             f"width and +-{tolerance * CURVE_TOLERANCE_STEPS[-1]:.0%}")
        arch, restriction, tol = drawn
        if restriction.startswith("any"):
            restriction += f": no draw within the search's widths {w.min}..{w.first} at this size"
        models.append(_arch_model(f"curve-random-x{m:g}", "curve", arch,
                                  folder / "archs" / f"curve_random_{random_seed}_x{m:g}.json", **common,
                                  kind="random", width_restriction=restriction, tolerance=tol))
        models.append(_arch_model(f"curve-search-x{m:g}", "curve", scaled,
                                  folder / "archs" / f"curve_search_x{m:g}.json", **common, kind="search-scaled",
                                  width_restriction=f"scaled body (C{found.width} -> C{scaled.width})",
                                  tolerance=None))
    return models


def share_runs(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's `runs_as`: the label whose run folders it trains in, the first model with the same training.

    The curve's x1 points are models of the comparison itself (the scaled body at x1 is the search's result, the
    random draw at x1 `random-0` at the same tolerance); training them twice would cost hours for nothing."""
    first: dict[str, str] = {}
    for m in models:
        m["runs_as"] = first.setdefault(m.get("key", "label:" + m["label"]), m["label"])
    return models


# -- training ------------------------------------------------------------------------------------------------------

def final_train_accuracy(out: Path, report: dict[str, Any]) -> Optional[float]:
    """The last epoch's train accuracy (%): report.json's history where it has one, else metrics.csv.

    metrics.csv is appended to across resumptions, so the row of the highest epoch is the final one."""
    history = report.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict) and "train_acc" in history[-1]:
        return float(history[-1]["train_acc"])
    for key in ("train_acc", "train_accuracy", "final_train_acc"):
        if isinstance(report.get(key), (int, float)):
            return float(report[key])
    path = out / "metrics.csv"
    if not path.exists():
        return None
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train_acc") not in (None, "")]
    if not rows:
        return None
    return float(max(rows, key=lambda r: int(float(r["epoch"])))["train_acc"])


def run_folder(model: dict[str, Any], seed: int, folder: Path) -> Path:
    """Where `model`'s training under `seed` lives (a model sharing another's runs: the other's folder)."""
    return folder / model.get("runs_as", model["label"]) / f"seed{seed}"


def train_one(model: dict[str, Any], seed: int, config_path: str, face_source: Optional[str], sets: list[str],
              folder: Path, threads: int) -> dict[str, Any]:
    """One `facenas train` child (resumed where a checkpoint exists) unless its report.json exists; its scores."""
    label, out = model.get("runs_as", model["label"]), run_folder(model, seed, folder)
    if not (out / "report.json").exists():
        cmd = [sys.executable, "-m", "facenas.cli.main", "train", "-c", config_path, *model["args"],
               "--seed", str(seed), "--out", str(out), "--set", f"faces.train.threads={threads}"]
        cmd += ["--face-source", face_source] if face_source else []
        cmd += [a for s in sets for a in ("--set", s)]
        if (out / "checkpoints" / "last.pt").exists():
            cmd.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        began = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{label} seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        (out / "wall_s.txt").write_text(f"{time.perf_counter() - began:.1f}\n")
        print(f"{label} seed {seed}: done in {time.perf_counter() - began:.0f} s", flush=True)
    return finished_run(model, seed, folder)


def finished_run(model: dict[str, Any], seed: int, folder: Path) -> dict[str, Any]:
    """The scores of one finished training (its report.json), checked to be a training of `model`'s net.

    The test accuracy is 10-fold (thresholds chosen on nine folds), as the field reports LFW; `accuracy_sem` is its
    standard error over folds, i.e. the noise of the pairs, where the spread over seeds is the noise of training."""
    label, out = model.get("runs_as", model["label"]), run_folder(model, seed, folder)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text())
    if report.get("arch_short") != model["arch"]:
        raise RuntimeError(f"{out} holds a training of {report.get('arch_short')}, not of {label}'s {model['arch']}: "
                           "another comparison used this run folder; give this one its own --runs")
    wall = out / "wall_s.txt"
    test = report["test_people"]
    if test is None:
        raise RuntimeError(f"{report_path}: no test people; set faces.data.test_identities in the config")
    return {"label": label, "seed": seed, "params": report["params"], "macs": report["macs"],
            "arch": report["arch_short"], "epochs": report["epochs"], "pairs": test["pairs"],
            "test": {"accuracy": 100 * test["accuracy"], "accuracy_sem": 100 * test["accuracy_sem"],
                     "auc": test["auc"], "eer": 100 * test["eer"], "tar_at_far": test["tar_at_far"]},
            "heldout_accuracy": report["heldout_accuracy"], "train_accuracy": final_train_accuracy(out, report),
            "wall_s": float(wall.read_text()) if wall.exists() else report["session_wall_s"]}


def measure_latency(models: list[dict[str, Any]], folder: Path, target: Any, rounds: int = 3
                    ) -> dict[str, dict[str, Any]]:
    """Each compared model's latency on `target` (the config's `search.target`), measured on its seed-0 `model.pt`
    exactly as `facenas export` times the exported file. Of `rounds` measurements the least disturbed (lowest
    median) is kept: the trainings are over by then, but other work on the machine only ever adds time."""
    out = {}
    for m in models:
        if m.get("role") == "curve":
            continue
        _, network, _ = load_face_model(run_folder(m, 0, folder) / "model.pt")
        best = min((arch_latency(network, target) for _ in range(rounds)), key=lambda t: t.median_ms)
        out[m["label"]] = latency_report(best, target)
        print(f"{m['label']}: {best.median_ms:.3f} ms (interquartile range {best.spread_ms:.3f})", flush=True)
    return out


def jobs_for(models: list[dict[str, Any]], seeds: int, curve_seeds: int) -> list[tuple[dict[str, Any], int]]:
    """The distinct trainings: (a model standing for its run folder, seed), seed by seed, every seed of the
    comparison before the size curve's own trainings, so that a comparison cut short has whole models to report."""
    jobs: dict[tuple[str, int], tuple[dict[str, Any], int]] = {}
    for curve in (False, True):
        for seed in range(curve_seeds if curve else seeds):
            for m in models:
                if (m.get("role") == "curve") == curve:
                    jobs.setdefault((m["runs_as"], seed), (m, seed))
    return list(jobs.values())


def runs_per_model(models: list[dict[str, Any]], trained: list[dict[str, Any]], seeds: int,
                   curve_seeds: int) -> list[dict[str, Any]]:
    """Every model's runs under its own label (a model sharing another's runs gets copies); of an unfinished
    comparison, the runs finished so far."""
    by_key = {(r["label"], r["seed"]): r for r in trained}
    out = []
    for m in models:
        for seed in range(curve_seeds if m.get("role") == "curve" else seeds):
            if (m["runs_as"], seed) in by_key:
                out.append({**by_key[(m["runs_as"], seed)], "label": m["label"]})
    return out


def progress_lines(models: list[dict[str, Any]], runs: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """A comparison under way, from the trainings finished so far: each model's seeds done and its scores over
    them, and the search against random search once each has two seeds (a standard error)."""
    lines = [f"so far: {'model':18s} {'seeds':>5s}  {'test accuracy':>16s}  {'test AUC':>17s}  {'train acc':>16s}"]
    for m in models:
        s = summary.get(m["label"])
        if s is None:
            lines.append(f"so far: {m['label']:18s} {0:>5d}")
            continue
        lines.append(f"so far: {m['label']:18s} {s['accuracy']['n']:>5d}  {_pm(s['accuracy'], 2, 7)}  "
                     f"{_pm(s['auc'], 4, 7)}  {_pm(s['train_accuracy'], 2, 7)}{_flag(s)}")
    if "search" in summary:
        rival = versus_random_search(against(summary, labels=["random-search"]),
                                     {"random-search": paired(runs, "search", "random-search")})
        if rival is not None:
            lines += ["so far: " + rival["verdict"], "so far: " + rival["verdict_paired"]]
    return lines


# -- statistics ----------------------------------------------------------------------------------------------------

def mean_se(values: list[Optional[float]]) -> dict[str, float]:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if len(a) == 0:
        return {"mean": math.nan, "se": math.nan, "std": math.nan, "n": 0}
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return {"mean": float(a.mean()), "se": se, "std": float(a.std(ddof=1)) if len(a) > 1 else math.nan,
            "n": int(len(a))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean and standard error over seeds of each test measure, train accuracy, parameters, wall time.

    `trained` is False where the mean final train accuracy is below `TRAINED_BELOW` %: such a row's test scores
    measure a failed optimisation, not the architecture."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        train = mean_se([r.get("train_accuracy") for r in mine])
        out[label] = {"arch": mine[0]["arch"], "params": mine[0]["params"], "macs": mine[0]["macs"],
                      "wall_s": mean_se([r["wall_s"] for r in mine]),
                      "heldout_accuracy": mean_se([r["heldout_accuracy"] for r in mine]),
                      **{m: mean_se([r["test"][m] for r in mine]) for m in MEASURES if m in mine[0]["test"]},
                      "train_accuracy": train,
                      "trained": None if train["n"] == 0 else bool(train["mean"] >= TRAINED_BELOW)}
    return out


def welch(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """a - b for two means with standard errors: the difference, its standard error (Welch: the two variances are
    not pooled), z, the Welch-Satterthwaite degrees of freedom, and whether |difference| exceeds 2 standard errors
    (about a two-sided 5 % test; with 3 seeds a side the t quantile is larger, so read it as a floor)."""
    diff, se = a["mean"] - b["mean"], math.hypot(a["se"], b["se"])
    va, vb = a["se"] ** 2, b["se"] ** 2
    denominator = (va ** 2 / (a["n"] - 1) if a["n"] > 1 else math.nan) + \
        (vb ** 2 / (b["n"] - 1) if b["n"] > 1 else math.nan)
    df = (va + vb) ** 2 / denominator if denominator > 0 else math.nan
    return {**_judged(diff, se), "welch_df": df}


def _judged(diff: float, se: float) -> dict[str, Any]:
    z = diff / se if se > 0 else (math.copysign(math.inf, diff) if se == 0 and diff != 0 else math.nan)
    # no verdict without a standard error (one seed a side); a zero one (identical seeds) still decides
    return {"difference": diff, "se": se, "z": z,
            "exceeds_2se": bool(abs(diff) > 2 * se) if not math.isnan(se) else None}


def paired(runs: list[dict[str, Any]], reference: str, other: str) -> dict[str, Any]:
    """`reference` - `other` seed by seed. The seed draws the split (which people train, which are held out and
    tested, and the test pairs), and both models of a seed share it, so the split's part of the noise, common to
    the two, cancels in each seed's difference; the standard error is that of the differences over seeds (n - 1
    degrees of freedom: with 3 seeds, 2 s.e. is a floor, as in `welch`)."""
    by = {(r["label"], r["seed"]): r for r in runs}
    seeds = sorted(s for (label, s) in by if label == reference and (other, s) in by)
    out: dict[str, Any] = {}
    for m in MEASURES:
        diffs = [by[(reference, s)]["test"][m] - by[(other, s)]["test"][m] for s in seeds
                 if m in by[(reference, s)]["test"] and m in by[(other, s)]["test"]]
        if diffs:
            d = mean_se(diffs)
            out[m] = {**_judged(d["mean"], d["se"]), "seeds": d["n"]}
    return out


def against(summary: dict[str, Any], reference: str = "search",
            labels: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """The reference model minus each other one (`labels`, default all): difference of means, its standard error
    (Welch), z, and whether it exceeds 2 standard errors."""
    out: dict[str, Any] = {}
    for label in labels if labels is not None else list(summary):
        if label == reference or label not in summary:
            continue
        s = summary[label]
        out[label] = {m: welch(summary[reference][m], s[m]) for m in MEASURES
                      if m in s and m in summary[reference]}
    return out


def versus_random_search(versus: dict[str, Any], versus_paired: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The search against random search spelt out, unpaired (Welch) and paired by seed; None without it."""
    if "random-search" not in versus:
        return None
    return {**versus["random-search"], "verdict": verdict(versus["random-search"], "random-search", " (Welch)"),
            "paired": versus_paired["random-search"],
            "verdict_paired": verdict(versus_paired["random-search"], "random-search", PAIRED)}


def verdict(d: dict[str, Any], other: str, how: str = "") -> str:
    """One sentence on search - `other`'s accuracy and AUC difference (`how` the difference was taken): is it
    beyond 2 standard errors?"""
    parts = []
    for m, unit in (("accuracy", "points"), ("auc", "")):
        if m not in d:
            continue
        x = d[m]
        fmt = "{:+.2f}" if m == "accuracy" else "{:+.4f}"
        se_fmt = "{:.2f}" if m == "accuracy" else "{:.4f}"
        where = ("beyond 2 s.e." if x["exceeds_2se"] else "within 2 s.e.") if x["exceeds_2se"] is not None \
            else "s.e. unknown"
        parts.append(f"{m} {fmt.format(x['difference'])} +- {se_fmt.format(x['se'])}{' ' + unit if unit else ''} "
                     f"(z {x['z']:+.2f}, {where})")
    acc = d.get("accuracy", {})
    if acc.get("exceeds_2se") is None:
        conclusion = "no standard error (fewer than 2 seeds a side), so no verdict"
    elif acc["exceeds_2se"]:
        conclusion = "the search is better" if acc["difference"] > 0 else f"{other} is better"
    else:
        conclusion = f"no difference the seeds can resolve between the search and {other}"
    return f"search - {other}{how}: " + "; ".join(parts) + f": {conclusion}"


# -- the size curve ------------------------------------------------------------------------------------------------

def curve_points(models: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per curve model: its size (target, params, MACs), test accuracy and AUC (mean +- s.e.) and train accuracy."""
    points = []
    for m in models:
        if m.get("role") != "curve":
            continue
        s = summary[m["label"]]
        points.append({"multiple": m["multiple"], "kind": m["kind"], "label": m["label"], "runs_as": m["runs_as"],
                       "target_params": m["target_params"], "params": s["params"], "macs": s["macs"],
                       "relative_to_target": (s["params"] - m["target_params"]) / m["target_params"],
                       "arch": s["arch"], "width_restriction": m["width_restriction"], "tolerance": m["tolerance"],
                       "accuracy": s["accuracy"], "auc": s["auc"], "train_accuracy": s["train_accuracy"],
                       "trained": s["trained"]})
    return points


def plot_size_curve(points: list[dict[str, Any]], summary: dict[str, Any], models: list[dict[str, Any]],
                    target: int, path: Path, title: str) -> None:
    """Test accuracy and AUC against parameters (log x), error bars one standard error over seeds: the curve's two
    lines (random of the space, the search's body scaled), with the comparison's own models as single points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, measure, name in ((axes[0], "accuracy", "test accuracy (%)"), (axes[1], "auc", "test ROC AUC")):
        for kind, marker, text in (("random", "o", "random of the space"), ("search-scaled", "s",
                                                                              "search body, width scaled")):
            pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["params"])
            if pts:
                ax.errorbar([p["params"] for p in pts], [p[measure]["mean"] for p in pts],
                            yerr=[np.nan_to_num(p[measure]["se"]) for p in pts], marker=marker, capsize=3,
                            label=text)
        for m in models:
            if m.get("role") == "curve" or m["label"] not in summary:
                continue
            s = summary[m["label"]]
            marker = {"search": "*", "random-search": "D", "random": "x", "baseline": "^"}[m["role"]]
            ax.errorbar([s["params"]], [s[measure]["mean"]], yerr=[np.nan_to_num(s[measure]["se"])], marker=marker,
                        markersize=10 if m["role"] == "search" else 7, capsize=3, linestyle="none",
                        label=m["label"] if m["role"] != "random" else None,
                        color="grey" if m["role"] == "random" else None)
        ax.axvline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the printout --------------------------------------------------------------------------------------------------

def _flag(s: dict[str, Any]) -> str:
    return f"  !! train acc < {TRAINED_BELOW:.0f} %" if s["trained"] is False else ""


PAIRED = " (paired by seed: same split and test pairs)"

FLAG_NOTE = (f"!! marks a mean final train accuracy below {TRAINED_BELOW:.0f} %: the net did not fit its training "
             "people, so its test scores say nothing about its architecture")


def _pm(x: dict[str, float], digits: int, width: int) -> str:
    return f"{x['mean']:{width}.{digits}f} +- {x['se']:{digits + 3}.{digits}f}"


def report_lines(result: dict[str, Any]) -> list[str]:
    """The printout of a finished comparison (a function of the JSON alone, so that it can be redone from it)."""
    summary, models, latency = result["summary"], result["models"], result.get("latency") or {}
    lines = [f"{'model':16s} {'params':>8s}  {'test accuracy':>16s}  {'test AUC':>17s}  {'train acc':>16s}  "
             f"{'wall s':>7s}" + ("  latency ms (IQR)" if latency else "")]
    for m in models:
        if m.get("role") == "curve":
            continue
        s, t = summary[m["label"]], latency.get(m["label"])
        ms = f"  {t['median_ms']:7.3f} ({t['spread_ms']:.3f})" if t else ""
        lines.append(f"{m['label']:16s} {s['params']:>8,}  {_pm(s['accuracy'], 2, 7)}  {_pm(s['auc'], 4, 7)}  "
                     f"{_pm(s['train_accuracy'], 2, 7)}  {s['wall_s']['mean']:7.0f}{ms}{_flag(s)}")
    if any(summary[m["label"]]["trained"] is False for m in models if m.get("role") != "curve"):
        lines.append(FLAG_NOTE)
    for m in models:
        if m.get("note"):
            lines.append(f"note: {m['note']}")
    for differences, how in ((result["search_minus"], ""), (result.get("search_minus_paired", {}), PAIRED)):
        for label, d in differences.items():
            acc = d.get("accuracy")
            if acc:
                beyond = {True: ", beyond 2 s.e.", False: "", None: ""}[acc["exceeds_2se"]]
                lines.append(f"search - {label:16s} accuracy {acc['difference']:+.2f} +- {acc['se']:.2f} "
                             f"(z {acc['z']:+.2f}{beyond}){how}")
    if result.get("search_vs_random_search") is not None:
        lines.append(result["search_vs_random_search"]["verdict"])
        if "verdict_paired" in result["search_vs_random_search"]:
            lines.append(result["search_vs_random_search"]["verdict_paired"])
    curve = result.get("size_curve")
    if curve:
        lines.append("")
        lines.append(f"size curve ({curve['seeds']} seeds each; x = multiple of the search result's "
                     f"{result['target_params']:,} parameters)")
        lines.append(f"{'kind':14s} {'x':>5s} {'params':>8s} {'MACs':>11s}  {'test accuracy':>16s}  "
                     f"{'test AUC':>17s}  {'train acc':>16s}  arch; widths")
        for p in sorted(curve["points"], key=lambda p: (p["kind"], p["multiple"])):
            lines.append(f"{p['kind']:14s} {p['multiple']:>5g} {p['params']:>8,} {p['macs']:>11,}  "
                         f"{_pm(p['accuracy'], 2, 7)}  {_pm(p['auc'], 4, 7)}  {_pm(p['train_accuracy'], 2, 7)}  "
                         f"{p['arch']}; {p['width_restriction']}{_flag(p)}")
        if any(p["trained"] is False for p in curve["points"]):
            lines.append(FLAG_NOTE)
        if curve.get("plot"):
            lines.append(f"plot: {curve['plot']}")
    return lines


# -- the command ---------------------------------------------------------------------------------------------------

def parse_multiples(text: Optional[str]) -> list[float]:
    """`0.25,0.5,1,2,4` -> [0.25, 0.5, 1.0, 2.0, 4.0]; each must be > 0 and appear once."""
    if not text:
        return []
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--size-curve {text!r}: expected comma-separated numbers, e.g. 0.25,0.5,1,2,4") from None
    if any(v <= 0 or not math.isfinite(v) for v in values) or len(set(values)) != len(values):
        raise SystemExit(f"--size-curve {text!r}: multiples must be distinct numbers > 0")
    return values


def parse_baselines(text: str) -> list[str]:
    from facenas.models.backbones import BACKBONES

    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        raise SystemExit(f"--baselines: unknown {', '.join(unknown)}; valid: {', '.join(BACKBONES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, type=Path, help="the search's best_arch.json")
    parser.add_argument("--random-search", type=Path, default=None,
                        help="random search's best_arch.json at the same search cost (label random-search)")
    parser.add_argument("-c", "--config", required=True, help="the train config every model is trained with")
    parser.add_argument("--face-source", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--random", type=int, default=3, help="random architectures at the same parameter count")
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--random-size", choices=("result", "budget"), default="result", help="draw the random "
                        "nets at the result's parameter count, or at any size inside search.constraints (a "
                        "constrained search's control)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="relative distance of a random architecture's "
                        "parameter count to the search result's")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                        help="hand designs scaled to the search result's size, comma-separated ('' for none)")
    parser.add_argument("--size-curve", default=None, metavar="MULTIPLES",
                        help="e.g. 0.25,0.5,1,2,4: train a random net and the search's body scaled to each multiple "
                        "of the search result's parameter count (default: no curve)")
    parser.add_argument("--size-curve-seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--runs", type=Path, default=None, help="run folder (default runs/compare-<config name>)")
    parser.add_argument("--out", default=None, help="the JSON (default bench/results/face_compare-<name>.json)")
    parser.add_argument("--plot", default=None, help="the size curve's plot "
                        "(default bench/results/face_size_curve-<name>.png)")
    parser.add_argument("--latency", action="store_true", help="after training, time every compared model on the "
                        "config's search.target (onnxruntime, as `facenas export` and a constrained search do)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the scores so far, and "
                        "train nothing (only the drawn architectures' JSON files are written)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = {"faces.data.source": args.face_source} if args.face_source else {}
    overrides.update(dict(parse_override(text) for text in args.set))
    multiples = parse_multiples(args.size_curve)
    baselines = parse_baselines(args.baselines)
    config = load_config(args.config, overrides)
    name = config.name
    folder = args.runs or Path("runs") / f"compare-{name}"
    models, target = plan(args.config, args.arch, overrides, args.random, args.random_seed, folder, args.tolerance,
                          random_search=args.random_search, baselines=baselines, random_size=args.random_size)
    if multiples:
        models += plan_size_curve(args.config, args.arch, overrides, multiples, args.random_seed, folder,
                                  args.tolerance)
    share_runs(models)
    for m in models:
        shared = f"  (runs of {m['runs_as']})" if m["runs_as"] != m["label"] else ""
        size = f" x{m['multiple']:g} ({m['target_params']:,}), {m['width_restriction']}" if "multiple" in m else ""
        print(f"{m['label']:16s} {m['params']:>8,} parameters  {m['arch']}{size}{shared}", flush=True)
        if m.get("note"):
            print(f"  note: {m['note']}", flush=True)
    curve_seeds = args.size_curve_seeds if multiples else 0
    jobs = jobs_for(models, args.seeds, curve_seeds)
    finished = [(m, s) for m, s in jobs if (run_folder(m, s, folder) / "report.json").exists()]
    print(f"{len(jobs)} trainings ({len(finished)} already done)", flush=True)
    if args.dry_run:
        if finished:
            runs = runs_per_model(models, [finished_run(m, s, folder) for m, s in finished], args.seeds, curve_seeds)
            for line in progress_lines(models, runs, summarise(runs)):
                print(line)
        return
    began = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        trained = list(pool.map(lambda job: train_one(job[0], job[1], args.config, args.face_source, args.set,
                                                      folder, args.threads), jobs))
    runs = runs_per_model(models, trained, args.seeds, curve_seeds)
    summary = summarise(runs)
    main_labels = [m["label"] for m in models if m.get("role") != "curve"]
    versus = against(summary, labels=main_labels)
    latency = measure_latency(models, folder, config.search.target) if args.latency else None
    versus_paired = {label: paired(runs, "search", label) for label in versus}
    rival = versus_random_search(versus, versus_paired)
    curve = None
    if multiples:
        plot = Path(args.plot or f"bench/results/face_size_curve-{name}.png")
        points = curve_points(models, summary)
        plot_size_curve(points, summary, models, target, plot, f"{name}: test people, {curve_seeds} seeds, "
                        "mean +- s.e.")
        curve = {"multiples": multiples, "seeds": curve_seeds, "tolerance": args.tolerance, "plot": str(plot),
                 "points": points}
    result = {
        "config": args.config, "name": name, "arch": str(args.arch), "target_params": target, "seeds": args.seeds,
        "tolerance": args.tolerance, "random_search": str(args.random_search) if args.random_search else None,
        "baselines": baselines, "trained_below": TRAINED_BELOW,
        "set": args.set, "jobs": args.jobs, "threads": args.threads, "wall_s": time.perf_counter() - began,
        "models": models, "summary": {k: v for k, v in summary.items() if k in main_labels},
        "search_minus": versus, "search_minus_paired": versus_paired, "search_vs_random_search": rival,
        "size_curve": curve, "latency": latency,
        "curve_summary": {k: v for k, v in summary.items() if k not in main_labels},
        "runs": [r for r in runs if r["label"] in main_labels],
        "trainings": trained}
    print()
    for line in report_lines(result):
        print(line)
    out = Path(args.out or f"bench/results/face_compare-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
