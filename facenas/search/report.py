"""`facenas report`: what a search did and why, from its run directory alone.

Which candidates did the strategy accept? The journal holds scores, not decisions, and re-deriving the decisions
from the rules would be a second implementation that could drift from the first. So the decisions are read off the
strategy itself, with nothing added to it: `incumbents` replays the recorded history through
`facenas.search.strategy.search` once per prefix, and lets every candidate after the prefix fail. A failure is never
accepted, so the result that replay returns is the strategy's incumbent after the prefix: its depth and width (the
macro phases) or its ops, kernels and micro width (the micro phases), with the incumbent's score. A candidate was
accepted exactly when the incumbent architecture after it differs from the one before it, and the incumbent's score
before a candidate is what it was compared with. The first depth and the first micro candidate (the macro result
re-scored at the micro budget) are baselines, taken without a comparison. The replays cost O(n^2) strategy steps.

A random run (`search.strategy: random`) has no rules to replay: each candidate is compared with the best score
before it (`random_decisions`), and its budget and what it spent come from its journal and summary.

The rest is presentation: `decisions` (pure) turns records into rows with the comparison in words and, where the
config gives `search.noise.std`, the band of the rule thresholds around the incumbent; `write_report` writes
`trajectory.png` and `report.md`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from facenas.config import Config, Rules, SearchSpec, config_data, decision_rules, parse_config
from facenas.errors import JournalError
from facenas.search.constraints import BudgetCheck, RecordedLimits
from facenas.search.journal import CandidateRecord, SQLiteJournal
from facenas.search.random_search import BUDGET_META, Budget, best_record, progress, result_of
from facenas.search.run import RunPaths, score_description
from facenas.search.strategy import PHASES, Candidate, Done, HistoryMismatch, Outcome, SearchResult, next_step, search
from facenas.space.arch import OP_NAMES, Profile

TRAJECTORY_FILE = "trajectory.png"
REPORT_FILE = "report.md"
LATENCY_FILE = "latency.png"
PHASE_COLOURS = {"depth": "tab:blue", "width": "tab:orange", "ops": "tab:green", "kernels": "tab:purple",
                 "random": "tab:red"}
MACRO = ("depth", "width")
#: Phases a report shows, in order: the egnas strategy's four, then the random baseline's one.
REPORT_PHASES = (*PHASES, "random")


# -- the strategy's incumbents ---------------------------------------------------------------------------------

def _result_after(spec: SearchSpec, profile: Profile, history: Sequence[tuple[Candidate, Outcome]],
                  limits: Optional[BudgetCheck] = None) -> SearchResult:
    """The strategy's result when `history` happened and every later candidate failed: its incumbent after it."""
    gen = search(spec, profile, limits)
    try:
        next(gen)
        for _, outcome in history:
            gen.send(outcome)
        while True:
            gen.send(Outcome.failure())
    except StopIteration as stop:
        return stop.value
    raise AssertionError("unreachable")  # pragma: no cover


def incumbents(spec: SearchSpec, profile: Profile, history: Sequence[tuple[Candidate, Outcome]],
               limits: Optional[BudgetCheck] = None) -> list[SearchResult]:
    """The incumbent before the first candidate and after each one (`len(history) + 1` results).

    Raises `JournalError` where the history is not a path this strategy could have taken (another config).
    """
    try:
        next_step(spec, profile, history, limits)
    except HistoryMismatch as exc:
        raise JournalError(f"the journal does not follow the run's configuration ({exc})") from None
    return [_result_after(spec, profile, history[:k], limits) for k in range(len(history) + 1)]


def _macro_key(r: SearchResult) -> tuple[Any, ...]:
    return r.macro_depth, r.macro_width


def _micro_key(r: SearchResult) -> tuple[Any, ...]:
    return r.ops, r.kernels, r.micro_width


# -- decisions --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """One candidate, what the strategy compared it with and what it decided."""

    index: int
    phase: str
    depth: int
    width: int
    epochs: int
    params: int
    arch: str
    status: str  # finished / failed
    score: Optional[float]
    train_score: Optional[float]
    verdict: str  # baseline / accepted / rejected / failed / skipped (over budget, never trained)
    incumbent: Optional[float]  # the incumbent's score it was compared with (None: no comparison or no score)
    words: str
    band: Optional[tuple[float, float]] = None  # incumbent - lower rule, incumbent + upper rule (noise known)
    z: Optional[float] = None  # (score - incumbent) / (std sqrt 2), noise known
    latency_ms: Optional[float] = None  # on the search's target, where it measured latencies

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    @property
    def within_noise(self) -> Optional[bool]:
        """Inside the band: the rules decided on a difference no larger than the noise multiples they allow."""
        if self.band is None or self.score is None:
            return None
        return self.band[0] < self.score < self.band[1]


def phase_thresholds(rules: Rules, phase: str) -> tuple[float, float]:
    """(below, above) the incumbent: the rule thresholds of a phase, the half-widths of its noise band."""
    if phase == "depth":
        return rules.depth_drop, rules.depth_gain
    if phase == "width":
        return rules.width_tolerance, rules.width_tolerance
    return rules.micro_gain, rules.micro_gain


def _fmt(x: Optional[float]) -> str:
    return "failure" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _change(before: SearchResult, c: Candidate) -> str:
    """What a micro candidate changes against the incumbent: `layer 4 conv`, `layer 2 k5`."""
    parts = [f"layer {i} {OP_NAMES[o]}" for i, (o, p) in enumerate(zip(c.arch.ops, before.ops)) if o != p]
    parts += [f"layer {i} k{k}" for i, (k, p) in enumerate(zip(c.arch.kernels, before.kernels)) if k != p]
    return ", ".join(parts) or "no change"


def _words(c: Candidate, verdict: str, score: Optional[float], inc: Optional[float], before: SearchResult,
           rules: Rules, dtype: type) -> str:
    """The comparison in words. The verdict is the strategy's; only the depth phase's reason for a rejection (a
    tolerated score or a clear drop) is re-derived from its rule, in the strategy's dtype."""
    s, b = _fmt(score), _fmt(inc)
    if c.phase in MACRO:
        what = f"depth {c.arch.depth}" if c.phase == "depth" else f"width {c.arch.width}"
    else:
        what = f"{c.phase}: {_change(before, c)} (width {c.arch.width})"
    if verdict == "baseline":
        first = f"{what} is the first depth" if c.phase == "depth" else (
            f"{c.phase}: the macro result re-scored at the micro budget ({c.epochs} epoch{'s' * (c.epochs != 1)})")
        return f"{first}: the incumbent, at {s}" if score is not None else f"{first}: failed, no incumbent score"
    if c.phase == "depth":
        gain, drop = rules.depth_gain, rules.depth_drop
        if verdict == "failed":
            return f"{what} failed: counted as a clear drop"
        if verdict == "accepted":
            return f"{what} accepted: {s} >= {b} + {gain:.2f}"
        tolerated = inc is not None and dtype(score) >= dtype(inc) - dtype(drop)
        if tolerated:
            return f"{what} not accepted, tolerated: {s} < {b} + {gain:.2f}, >= {b} - {drop:.2f}"
        return f"{what} rejected, a clear drop: {s} < {b} - {drop:.2f}"
    if c.phase == "width":
        tol = rules.width_tolerance
        if verdict == "failed":
            return f"{what} failed: counted as a failure"
        op = ">=" if verdict == "accepted" else "<"
        return f"{what} {verdict}: {s} {op} {b} - {tol:.2f}"
    if verdict == "failed":
        return f"{what} failed: reverted"
    op = ">" if verdict == "accepted" else "<="
    return f"{what} {verdict}: {s} {op} {b} + {rules.micro_gain:.2f}"


def random_decisions(records: Sequence[CandidateRecord]) -> list[Decision]:
    """A random run's candidates: each is compared with the best score before it (the random strategy keeps the
    best; `accepted` marks a new best, the first scored candidate is the baseline, a failure never wins)."""
    out, best = [], None
    for r in records:
        c = r.candidate
        score = None if r.status == "failed" or r.score is None or not math.isfinite(r.score) else r.score
        what = f"random {c.arch.short()} ({c.epochs} epoch{'s' * (c.epochs != 1)})"
        if score is None:
            verdict, words = "failed", f"{what} failed: never the best"
        elif best is None:
            verdict, words = "baseline", f"{what}: the first score, {_fmt(score)}, the best so far"
        elif score > best:
            verdict, words = "accepted", f"{what}: the new best, {_fmt(score)} > {_fmt(best)}"
        else:
            verdict, words = "rejected", f"{what}: {_fmt(score)} <= the best so far, {_fmt(best)}"
        out.append(Decision(
            index=r.index, phase=c.phase, depth=c.arch.depth, width=c.arch.width, epochs=c.epochs, params=r.params,
            arch=c.arch.short(), status=r.status, score=score, train_score=r.train_score, verdict=verdict,
            incumbent=best if verdict in ("accepted", "rejected") else None, words=words))
        if score is not None and (best is None or score > best):
            best = score
    return out


def decisions(spec: SearchSpec, records: Sequence[CandidateRecord]) -> list[Decision]:
    """Every finished or failed candidate, in search order, with the strategy's decision on it."""
    if not records:
        return []
    if spec.strategy == "random":
        return random_decisions(records)
    profile = records[0].candidate.arch.profile
    history = [(r.candidate, r.outcome) for r in records]
    states = incumbents(spec, profile, history, RecordedLimits(records))
    rules = decision_rules(spec)
    dtype = np.float32 if spec.score_dtype == "float32" else np.float64
    se = spec.noise.std * math.sqrt(2.0) if spec.noise.std is not None else None
    baselines = {_first(records, "depth"), _first(records, "ops" if spec.micro.ops else "kernels")}
    out = []
    for r, before, after in zip(records, states, states[1:]):
        c = r.candidate
        macro = c.phase in MACRO
        key = _macro_key if macro else _micro_key
        inc_before = before.macro_score if macro else before.micro_score
        score = None if r.status == "failed" or r.score is None or not math.isfinite(r.score) else r.score
        if r.status == "skipped":  # over budget: decided without training, compared with nothing
            verdict = "skipped"
        elif key(after) != key(before):
            verdict = "accepted"
        elif r.index in baselines:
            verdict = "baseline"
        else:
            verdict = "failed" if score is None else "rejected"
        compared = None if verdict in ("baseline", "skipped") else inc_before
        band = z = None
        if se is not None and compared is not None:
            below, above = phase_thresholds(rules, c.phase)
            band = (compared - below, compared + above)
            if score is not None:
                z = (score - compared) / se
        out.append(Decision(
            index=r.index, phase=c.phase, depth=c.arch.depth, width=c.arch.width, epochs=c.epochs, params=r.params,
            arch=c.arch.short(), status=r.status, score=score, train_score=r.train_score, verdict=verdict,
            incumbent=compared, band=band, z=z, latency_ms=r.latency_ms,
            words=(f"{c.arch.short()} skipped, over budget: {r.error}" if verdict == "skipped"
                   else _words(c, verdict, score, compared, before, rules, dtype))))
    return out


def _first(records: Sequence[CandidateRecord], phase: str) -> int:
    return next((r.index for r in records if r.candidate.phase == phase), -1)


# -- the run ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunReport:
    """A run directory read back: its config, journal and summary, and the strategy's decisions."""

    root: Path
    config: Config
    meta: dict[str, Any]
    summary: Optional[dict[str, Any]]
    records: list[CandidateRecord]
    decisions: list[Decision]
    result: Optional[SearchResult]  # None while the search is unfinished
    next_candidate: Optional[Candidate]


def load_run(root: str | Path) -> RunReport:
    """Read a run directory; the journal is only read (a report never changes a run)."""
    paths = RunPaths(Path(root))
    if not paths.journal.is_file():
        raise JournalError(f"{paths.root} holds no search journal ({paths.journal.name}); give a run directory "
                           "written by `facenas search`")
    with SQLiteJournal(paths.journal) as journal:
        meta = journal.meta()
        records = journal.completed()
    if paths.config.is_file():
        config = parse_config(config_data(paths.config), str(paths.config))
    elif "config" in meta:
        config = parse_config(meta["config"], f"{paths.journal} (meta)")
    else:
        raise JournalError(f"{paths.root} has neither config.yaml nor a config in its journal")
    summary = json.loads(paths.summary.read_text()) if paths.summary.is_file() else None
    result, nxt = None, None
    if records and config.search.strategy == "random":
        result, nxt = _random_state(config, meta, records)
    elif records:
        history = [(r.candidate, r.outcome) for r in records]
        try:
            step = next_step(config.search, records[0].candidate.arch.profile, history, RecordedLimits(records))
        except HistoryMismatch as exc:
            raise JournalError(f"{paths.journal} does not follow {paths.config.name} ({exc})") from None
        result, nxt = (step.result, None) if isinstance(step, Done) else (None, step.candidate)
    return RunReport(paths.root, config, meta, summary, records, decisions(config.search, records), result, nxt)


def _random_state(config: Config, meta: dict[str, Any], records: Sequence[CandidateRecord]
                  ) -> tuple[Optional[SearchResult], Optional[Candidate]]:
    """(result, None) for a finished random run, (None, next candidate) for an unfinished one."""
    if BUDGET_META not in meta:
        raise JournalError(f"the journal of this random run holds no budget ({BUDGET_META}); was it written by "
                           "`facenas search --strategy random`?")
    stopped, nxt = progress(config.search, records[0].candidate.arch.profile, config.seed,
                            Budget.from_dict(meta[BUDGET_META]), records)
    best = best_record(records)
    if stopped is None or best is None:
        return None, nxt if stopped is None else None
    return result_of(best), None


def rules_description(spec: SearchSpec) -> str:
    if spec.strategy == "random":
        return ("random search: architectures drawn independently from the space, each trained once; the best score "
                "wins, a failure never")
    r = decision_rules(spec)
    values = (f"depth gain {r.depth_gain:.3f}, depth drop {r.depth_drop:.3f}, width tolerance {r.width_tolerance:.3f},"
              f" micro gain {r.micro_gain:.3f}")
    n = spec.noise
    if n.std is None:
        return f"the authors' point rules: {values}"
    return (f"rules in units of the measured noise (std {n.std:g}, standard error of a difference "
            f"{n.std * math.sqrt(2):.3f}; z {n.depth_gain_z:g} / {n.depth_drop_z:g} / {n.width_tolerance_z:g} / "
            f"{n.micro_gain_z:g}): {values}")


TABLE_HEADER = ("#", "phase", "depth", "width", "epochs", "params", "latency ms", "score", "train", "status",
                "accepted")


def table_rows(items: Sequence[Decision]) -> list[tuple[str, ...]]:
    """The candidate table: one row per candidate, `accepted` yes / baseline / no."""
    def num(x: Optional[float]) -> str:
        return "" if x is None or not math.isfinite(x) else f"{x:.2f}"

    return [(str(d.index), d.phase, str(d.depth), str(d.width), str(d.epochs), f"{d.params:,}", num(d.latency_ms),
             num(d.score), num(d.train_score), d.status,
             {"accepted": "yes", "baseline": "baseline"}.get(d.verdict, "no")) for d in items]


def latency_front(items: Sequence[Decision]) -> list[Decision]:
    """The candidates no other beats on both latency and score (lower latency, higher score), fastest first."""
    timed = sorted((d for d in items if d.latency_ms is not None and d.score is not None),
                   key=lambda d: (d.latency_ms, -d.score))
    front: list[Decision] = []
    for d in timed:
        if not front or d.score > front[-1].score:
            front.append(d)
    return front


def noise_band(items: Sequence[Decision]) -> list[tuple[int, float, float]]:
    """(index, low, high) of every candidate compared under a known noise: the band the plot draws."""
    return [(d.index, d.band[0], d.band[1]) for d in items if d.band is not None]


def markdown(run: RunReport, trajectory: Optional[str] = TRAJECTORY_FILE) -> str:
    """The report as markdown (pure: reads nothing, writes nothing)."""
    cfg, s = run.config, run.summary or {}
    failed = sum(d.status == "failed" for d in run.decisions)
    skipped = sum(d.status == "skipped" for d in run.decisions)
    evaluator = s.get("evaluator") or run.meta.get("evaluator") or {}
    lines = [f"# Search report: {cfg.name}", "",
             f"- run directory: `{run.root}`",
             f"- seed: {cfg.seed}",
             f"- task: {cfg.task}; dataset: {s.get('dataset') or evaluator.get('dataset') or evaluator.get('source')}",
             f"- protocol: {s.get('protocol') or evaluator.get('protocol') or 'held-out identities'}",
             f"- score: {score_description(cfg)}",
             f"- decisions: {rules_description(cfg.search)}",
             *([f"- budget: {_budget_words(s)}"] if s.get("strategy") == "random" else []),
             f"- candidates: {len(run.decisions) - skipped} ({failed} failed, {skipped} skipped over budget), "
             + ("search finished" if run.result is not None else
                f"search unfinished (next: {run.next_candidate.describe() if run.next_candidate else '?'})"),
             ""]
    if trajectory:
        lines += [f"![trajectory]({trajectory})", ""]
    front = latency_front(run.decisions)
    if front:
        lines += ["## Score against latency", "",
                  f"Latency on {_target_words(cfg)}. {skipped} candidate{'s' * (skipped != 1)} over budget "
                  f"({_constraint_words(cfg)}), skipped untrained. The front (no candidate is both faster and "
                  "better):", ""]
        lines += [f"- #{d.index} `{d.arch}`: {d.latency_ms:.3f} ms, score {d.score:.2f}" for d in front]
        lines += ["", f"![latency]({LATENCY_FILE})", ""]
    lines += ["## Candidates", "", "| " + " | ".join(TABLE_HEADER) + " |",
              "|" + "|".join("---:" if h not in ("phase", "status", "accepted") else "---" for h in TABLE_HEADER)
              + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(run.decisions)]
    lines += ["", "## Decisions"]
    for phase in REPORT_PHASES:
        items = [d for d in run.decisions if d.phase == phase]
        if items:
            lines += ["", f"### {phase}", ""] + [f"- #{d.index} {d.words}" for d in items]
    lines += ["", "## Result", ""]
    r = run.result
    if r is None:
        lines.append("The search has not finished; `facenas search ... --resume` continues it.")
    elif cfg.search.strategy == "random":
        best = [d for d in run.decisions if d.verdict in ("baseline", "accepted")][-1]  # the last new best
        lines += [f"- architecture: `{r.arch.short()}`",
                  f"- the best of {len(run.decisions)} random candidates (#{best.index}): {r.macro_epochs} "
                  f"epoch{'s' * (r.macro_epochs != 1)}, "
                  f"score {_fmt(r.macro_score)}"]
        if "params" in s:
            lines.append(f"- parameters {s['params']:,}, MACs {s.get('macs', 0):,}")
    else:
        lines += [f"- architecture: `{r.arch.short()}`",
                  f"- macro: depth {r.macro_depth}, width {r.macro_width}, {r.macro_epochs} epochs, score "
                  f"{_fmt(r.macro_score)}",
                  f"- micro: width {r.micro_width}, ops {''.join(map(str, r.ops))}, kernels "
                  f"{''.join(map(str, r.kernels))}, score {_fmt(r.micro_score)}"]
        if "params" in s:
            lines.append(f"- parameters {s['params']:,}, MACs {s.get('macs', 0):,}")
        if "candidate_wall_s" in s:
            lines.append(f"- training time {s['candidate_wall_s'] / 60:.1f} min over {len(run.decisions)} candidates")
    if cfg.search.noise.std is not None:
        compared = [d for d in run.decisions if d.band is not None and d.score is not None]
        within = [d for d in compared if d.within_noise]
        lines += ["", "## Noise", "",
                  f"Of {len(compared)} comparisons, {len(within)} fell inside the noise band (the incumbent's score "
                  "minus the lower rule threshold to plus the upper one): there the rules decided on a difference no "
                  "larger than the noise multiples they allow.", ""]
        lines += [f"- #{d.index} {d.words} (z = {d.z:+.2f})" for d in within]
    return "\n".join(lines) + "\n"


def _target_words(cfg: Config) -> str:
    t = cfg.search.target
    return (f"{t.runtime} (CPU), {t.threads} thread{'s' * (t.threads != 1)}, batch {t.batch}, {t.precision}, median "
            f"of {t.repeats} calls")


def _constraint_words(cfg: Config) -> str:
    c = cfg.search.constraints
    parts = [f"{name} {value:,}" if isinstance(value, int) else f"{name} {value:g}"
             for name, value in (("max_params", c.max_params), ("max_macs", c.max_macs),
                                 ("max_latency_ms", c.max_latency_ms)) if value is not None]
    return ", ".join(parts) or "no budget"


def _finish(fig: Any, ax: Any, xlabel: str, title: str, path: Path) -> None:
    """The report plots' common ending: labels, grid, the legend outside, saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(items: Sequence[Decision], path: Path, title: str, budget_ms: Optional[float] = None) -> None:
    """Score against measured latency, every trained candidate by phase, the front joined, the budget drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.5))
    timed = [d for d in items if d.latency_ms is not None and d.score is not None]
    for phase in REPORT_PHASES:
        xs = [d for d in timed if d.phase == phase]
        if xs:
            ax.scatter([d.latency_ms for d in xs], [d.score for d in xs], s=18, color=PHASE_COLOURS[phase],
                       label=phase, zorder=3)
    front = latency_front(items)
    ax.step([d.latency_ms for d in front], [d.score for d in front], where="post", color="k", lw=1.0,
            label="front", zorder=2)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="red", ls="--", lw=1.0, label=f"budget {budget_ms:g} ms")
    _finish(fig, ax, "latency (ms)", title, path)


def _budget_words(summary: dict[str, Any]) -> str:
    """A random run's budget next to what it spent, from its summary."""
    budget, spent = summary.get("budget") or {}, summary.get("spent") or {}
    parts = [f"{spent.get(key, 0):{fmt}} of {budget[key]:{fmt}} {unit}"
             for key, unit, fmt in (("epoch_macs", "epochs x MACs", ",.0f"), ("wall_s", "s of candidate time", ",.1f"),
                                    ("candidates", "candidates", "d")) if budget.get(key) is not None]
    source = budget.get("source")
    return ("spent " + ", ".join(parts) + f"; stopped by the {summary.get('stopped_by')} limit"
            + (f"; budget read from `{source['journal']}`" if source else ""))


def plot_trajectory(items: Sequence[Decision], path: Path, title: str) -> None:
    """Every candidate's score by index, coloured by phase; accepted, baseline and failed marked; noise band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8.0, min(20.0, 0.12 * len(items) + 6)), 4.5))
    scored = [d for d in items if d.score is not None]
    floor = min((d.score for d in scored), default=0.0)
    ax.plot([d.index for d in scored], [d.score for d in scored], color="0.8", lw=0.8, zorder=1)
    for phase in REPORT_PHASES:
        xs = [d for d in scored if d.phase == phase]
        if xs:
            ax.scatter([d.index for d in xs], [d.score for d in xs], s=18, color=PHASE_COLOURS[phase], label=phase,
                       zorder=3)
        banded = [d for d in items if d.phase == phase and d.band is not None]
        if banded:
            ax.fill_between([d.index for d in banded], [d.band[0] for d in banded], [d.band[1] for d in banded],
                            step="mid", color=PHASE_COLOURS[phase], alpha=0.15, lw=0, zorder=0)
    compared = [d for d in items if d.incumbent is not None and math.isfinite(d.incumbent)]
    ax.scatter([d.index for d in compared], [d.incumbent for d in compared], marker="_", s=60, color="0.3",
               label="incumbent compared with", zorder=2)
    accepted = [d for d in scored if d.verdict == "accepted"]
    ax.scatter([d.index for d in accepted], [d.score for d in accepted], s=90, facecolors="none", edgecolors="k",
               linewidths=1.2, label="accepted", zorder=4)
    base = [d for d in scored if d.verdict == "baseline"]
    ax.scatter([d.index for d in base], [d.score for d in base], s=90, marker="s", facecolors="none",
               edgecolors="k", linewidths=1.0, label="baseline", zorder=4)
    failed = [d for d in items if d.score is None and d.verdict != "skipped"]
    if failed:
        ax.scatter([d.index for d in failed], [floor] * len(failed), marker="x", color="red", s=40,
                   label="failed (drawn at the lowest score)", zorder=4)
    if any(d.band is not None for d in items):
        ax.fill_between([], [], [], color="0.5", alpha=0.15, label="noise band (rule thresholds)")
    _finish(fig, ax, "candidate", title, path)


def write_report(root: str | Path, out: Optional[str | Path] = None) -> tuple[Path, Path]:
    """Write `trajectory.png` and `report.md` (into `out`, default the run directory); returns their paths."""
    run = load_run(root)
    if not run.decisions:
        raise JournalError(f"{run.root} holds no finished candidate yet; nothing to report")
    folder = Path(out) if out is not None else run.root
    folder.mkdir(parents=True, exist_ok=True)
    png, md = folder / TRAJECTORY_FILE, folder / REPORT_FILE
    result = run.result.arch.short() if run.result is not None else "unfinished"
    plot_trajectory(run.decisions, png, f"{run.config.name}: {len(run.decisions)} candidates, {result}")
    if latency_front(run.decisions):
        plot_latency(run.decisions, folder / LATENCY_FILE, f"{run.config.name}: score against latency",
                     run.config.search.constraints.max_latency_ms)
    rel = png.name if png.parent == md.parent else str(png)
    md.write_text(markdown(run, rel))
    return png, md
