"""bench/face_compare.py, the backbone comparison: what it plans to train (models, labels, sizes, the size curve,
which trainings are shared), its statistics (Welch differences, the 2-standard-error verdict, the flag on nets that
did not train), and one tiny end-to-end run on the synthetic faces that a second call resumes without training."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facenas.config import load_config
from facenas.space.arch import Arch, Profile
from facenas.space.count import count_params
from facenas.train.face_job import retarget
from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "face_compare.py"
LFW_COMPARE = "configs/train/faces-lfw-dev-compare.yaml"  # planning reads the config only, never the photos
_spec = importlib.util.spec_from_file_location("face_compare", SCRIPT)
fc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fc)

PROFILE = Profile(in_channels=3, stem_stride=1, reductions=3, head="embedding", embedding_dim=128, input_size=56)


def write_arch(path, width, depth, ops, kernels):
    path.write_text(Arch(width, depth, ops, kernels, PROFILE).to_json() + "\n")
    return path


@pytest.fixture
def lfw_archs(tmp_path):
    """The lfw-dev search's result (D4 C8, 15,592 parameters once retargeted to the grey 56x56 compare config) and a
    stand-in for random search's result."""
    return (write_arch(tmp_path / "search.json", 8, 4, (0, 0, 0, 0), (3, 3, 3, 3)),
            write_arch(tmp_path / "random_search.json", 8, 5, (0, 1, 0, 0, 0), (3, 3, 3, 3, 3)))


def test_plan_names_every_model_at_the_search_results_size(tmp_path, lfw_archs):
    search, rival = lfw_archs
    models, target = fc.plan(ROOT / LFW_COMPARE, search, {}, 2, 0, tmp_path / "runs", 0.03, random_search=rival)
    assert target == 15_592
    assert [m["label"] for m in models] == ["search", "random-search", "random-0", "random-1", "mobilefacenet",
                                            "iresnet18"]
    by = {m["label"]: m for m in models}
    assert by["random-search"]["args"] == ["--arch", str(rival)]
    config = load_config(ROOT / LFW_COMPARE)
    assert by["random-search"]["params"] == count_params(retarget(Arch.from_json(rival.read_text()), config))
    for label in ("random-0", "random-1"):
        arch = Arch.from_json((tmp_path / "runs" / "archs" / f"random_0_{label[-1]}.json").read_text())
        assert abs(by[label]["params"] - target) <= 0.03 * target and 8 <= arch.width <= 16
        assert by[label]["arch"] != by["search"]["arch"] and by[label]["params"] == count_params(arch)
    assert by["random-0"]["arch"] != by["random-1"]["arch"]
    mobile = by["mobilefacenet"]
    assert mobile["at_target"] and mobile["note"] is None and abs(mobile["params"] - target) <= 0.1 * target
    assert mobile["args"] == ["--backbone", "mobilefacenet", "--backbone-params", str(target)]  # as before: resumable
    # iResNet-18's flatten-FC head alone outweighs 15.6k parameters: trained at its smallest width and said so
    resnet = by["iresnet18"]
    assert not resnet["at_target"] and resnet["params"] == 60_528 and resnet["args"][2] == "--backbone-width"
    assert "cannot be scaled to 15,592" in resnet["note"] and "60,528" in resnet["note"]
    # the same command plans the same models: what resumes a comparison
    again, _ = fc.plan(ROOT / LFW_COMPARE, search, {}, 2, 0, tmp_path / "runs", 0.03, random_search=rival)
    assert again == models


def test_random_nets_are_drawn_inside_the_configs_budget(tmp_path, lfw_archs):
    """Under `search.constraints` (a constrained search's budget), the random nets lie inside it: here MACs, which
    need no clock; a latency budget goes through the same `limits_for` with onnxruntime's measurement."""
    from facenas.space.count import count_macs

    search, _ = lfw_archs
    free, _ = fc.plan(ROOT / LFW_COMPARE, search, {}, 3, 0, tmp_path / "free", 0.03, baselines=[])
    macs = sorted(count_macs(Arch.from_json(Path(m["args"][1]).read_text())) for m in free[1:])
    assert macs[1] < macs[2]
    budget = {"search.constraints.max_macs": macs[1]}  # the costliest of the free draws is over it
    held, _ = fc.plan(ROOT / LFW_COMPARE, search, budget, 2, 0, tmp_path / "held", 0.03, baselines=[])
    drawn = [Arch.from_json(Path(m["args"][1]).read_text()) for m in held[1:]]
    assert len(drawn) == 2 and all(count_macs(a) <= macs[1] for a in drawn)


def test_random_nets_at_any_size_inside_the_budget_are_random_search_draws(tmp_path, lfw_archs):
    """--random-size budget: the control of a constrained search is random search's draw inside the same budget, at
    whatever size it lands; without a budget there is nothing to draw inside, and the script says so."""
    from facenas.space.count import count_macs

    search, _ = lfw_archs
    budget = {"search.constraints.max_macs": 10_000_000}
    models, _ = fc.plan(ROOT / LFW_COMPARE, search, budget, 3, 0, tmp_path, 0.03, baselines=[], random_size="budget")
    drawn = [Arch.from_json(Path(m["args"][1]).read_text()) for m in models[1:]]
    assert len(set(drawn)) == 3 and all(count_macs(a) <= 10_000_000 for a in drawn)
    assert len({count_params(a) for a in drawn}) > 1  # sizes differ: not held to the result's
    assert all(m["drawn"] == "within the budget" and m["args"][1].endswith(f"budget_0_{k}.json")
               for k, m in enumerate(models[1:]))
    # the draws are kept: a resumed comparison trains the same nets even where a remeasured budget would differ
    tighter = {"search.constraints.max_macs": 2_000_000}
    again, _ = fc.plan(ROOT / LFW_COMPARE, search, tighter, 3, 0, tmp_path, 0.03, baselines=[], random_size="budget")
    assert again == models
    with pytest.raises(SystemExit, match="search.constraints"):
        fc.plan(ROOT / LFW_COMPARE, search, {}, 1, 0, tmp_path, 0.03, baselines=[], random_size="budget")


@pytest.mark.parametrize("target, reachable", [(20_000, False), (100_000, True), (300_000, True)])
def test_iresnet18_reaches_budgets_from_its_smallest_width_up(target, reachable):
    model = fc.baseline_model(ROOT / LFW_COMPARE, {}, "iresnet18", target)
    assert model["at_target"] is reachable
    if reachable:
        assert abs(model["params"] - target) <= 0.1 * target and model["args"][2] == "--backbone-params"
    else:
        assert model["params"] > 1.1 * target and model["width"] == fc.SMALLEST_WIDTH


def test_size_curve_plan_draws_random_and_scaled_nets_and_shares_the_x1_runs(tmp_path, lfw_archs):
    search, _ = lfw_archs
    folder = tmp_path / "runs"
    models, target = fc.plan(ROOT / LFW_COMPARE, search, {}, 1, 0, folder, 0.03, baselines=["mobilefacenet"])
    curve = fc.plan_size_curve(ROOT / LFW_COMPARE, search, {}, [0.25, 1, 4], 0, folder, 0.03)
    assert [m["label"] for m in curve] == ["curve-random-x0.25", "curve-search-x0.25", "curve-random-x1",
                                           "curve-search-x1", "curve-random-x4", "curve-search-x4"]
    found = Arch.from_json(search.read_text())
    for m in curve:
        assert m["target_params"] == round(m["multiple"] * target)
        arch = Arch.from_json(Path(m["args"][1]).read_text())
        assert count_params(arch) == m["params"]
        if m["kind"] == "search-scaled":  # only the width moves
            assert (arch.depth, arch.ops, arch.kernels) == (found.depth, found.ops, found.kernels)
            assert abs(m["params"] - m["target_params"]) <= 0.1 * m["target_params"]
        else:
            assert abs(m["params"] - m["target_params"]) <= m["tolerance"] * m["target_params"]
    by = {m["label"]: m for m in curve}
    # 3,898 parameters is below every network of the space at the search's widths 8..16: widened, and recorded
    assert by["curve-random-x0.25"]["width_restriction"].startswith("any")
    assert by["curve-random-x4"]["width_restriction"] == "search (8..16)"
    assert by["curve-search-x4"]["params"] > by["curve-search-x1"]["params"] > by["curve-search-x0.25"]["params"]
    models = fc.share_runs(models + curve)
    runs_as = {m["label"]: m["runs_as"] for m in models}
    assert runs_as["curve-search-x1"] == "search" and runs_as["curve-random-x1"] == "random-0"
    assert runs_as["curve-random-x4"] == "curve-random-x4"
    jobs = fc.jobs_for(models, seeds=3, curve_seeds=2)
    # 3 models x 3 seeds, and 4 curve models of their own x 2 seeds; the x1 points add none
    assert len(jobs) == 3 * 3 + 4 * 2 and len({(m["runs_as"], s) for m, s in jobs}) == len(jobs)
    roles = [m.get("role") == "curve" for m, _ in jobs]
    assert roles == sorted(roles)  # every seed of the comparison first: a cut-short run has whole models


def test_tier_bounds_skip_only_impossible_width_ranges(lfw_archs):
    from facenas.space.sample import space_from_config

    config = load_config(ROOT / LFW_COMPARE)
    found = retarget(Arch.from_json(lfw_archs[0].read_text()), config)
    space = space_from_config(config, found.profile)
    assert not fc.tier_reachable(space, 8, 16, 3_898, 0.03)  # the search's smallest net has 15,592
    assert fc.tier_reachable(space, 8, 16, 15_592, 0.03)
    assert not fc.tier_reachable(space, 8, 16, 10_000_000, 0.03)
    assert fc.tier_reachable(space, 1, None, 3_898, 0.03)


def _run(label, accuracies, aucs, train, params=1000):
    return [{"label": label, "seed": s, "params": params, "macs": 10 * params, "arch": label, "wall_s": 5.0,
             "heldout_accuracy": 60.0, "train_accuracy": t, "test": {"accuracy": a, "auc": u, "eer": 100 - a}}
            for s, (a, u, t) in enumerate(zip(accuracies, aucs, train))]


def test_welch_summary_verdict_and_the_below_50_flag():
    runs = (_run("search", [80, 81, 82], [0.90, 0.91, 0.92], [90, 92, 94])
            + _run("random-search", [70, 71, 72], [0.80, 0.81, 0.82], [88, 90, 92])
            + _run("random-0", [79, 82, 80], [0.90, 0.92, 0.91], [30, 45, 60])
            + _run("mobilefacenet", [75, 85, 80], [0.85, 0.95, 0.90], [95, 95, 96]))
    summary = fc.summarise(runs)
    assert summary["random-0"]["train_accuracy"]["mean"] == pytest.approx(45.0)
    assert summary["random-0"]["trained"] is False and summary["search"]["trained"] is True
    versus = fc.against(summary)
    d = versus["random-search"]["accuracy"]
    se = math.sqrt(2 * (1 / 3))  # each side: std 1, 3 seeds
    assert d["difference"] == pytest.approx(10.0) and d["se"] == pytest.approx(se)
    assert d["exceeds_2se"] is True and d["welch_df"] == pytest.approx(4.0)  # equal variances: n1 + n2 - 2
    noisy = versus["mobilefacenet"]["accuracy"]  # +1 +- 2.9: within 2 standard errors
    assert noisy["difference"] == pytest.approx(1.0) and noisy["exceeds_2se"] is False
    sentence = fc.verdict(versus["random-search"], "random-search")
    assert "+10.00 +- 0.82" in sentence and "beyond 2 s.e." in sentence and "the search is better" in sentence
    assert "no difference the seeds can resolve" in fc.verdict(versus["mobilefacenet"], "mobilefacenet")
    models = [{"label": label, "role": role} for label, role in
              (("search", "search"), ("random-search", "random-search"), ("random-0", "random"),
               ("mobilefacenet", "baseline"))]
    lines = fc.report_lines({"summary": summary, "models": models, "search_minus": versus, "target_params": 1000,
                             "search_vs_random_search": {"verdict": sentence}})
    flagged = [line for line in lines if "!! train acc < 50 %" in line]
    assert len(flagged) == 1 and flagged[0].startswith("random-0")
    assert fc.FLAG_NOTE in lines
    assert any(line.startswith("search - random-search") and "beyond 2 s.e." in line for line in lines)
    row = next(line for line in lines if line.startswith("search "))
    assert "92.00 +-" in row  # the train accuracy beside the test scores


def test_paired_by_seed_cancels_the_splits_share_of_the_noise():
    """Each seed draws its own split, shared by every model of that seed: a split effect common to both sides
    (here 4 points from seed to seed) swamps Welch's unpaired standard error but cancels in the per-seed
    differences (-1.0, -1.5, -0.5: mean -1, standard error 0.29)."""
    runs = (_run("search", [80.0, 84.5, 88.5], [0.90, 0.92, 0.94], [90, 90, 90])
            + _run("random-search", [81.0, 86.0, 89.0], [0.91, 0.93, 0.95], [90, 90, 90]))
    welch = fc.against(fc.summarise(runs))["random-search"]["accuracy"]
    assert welch["difference"] == pytest.approx(-1.0) and welch["exceeds_2se"] is False
    d = fc.paired(runs, "search", "random-search")
    assert d["accuracy"]["difference"] == pytest.approx(-1.0) and d["accuracy"]["seeds"] == 3
    assert d["accuracy"]["se"] == pytest.approx(0.5 / math.sqrt(3)) and d["accuracy"]["exceeds_2se"] is True
    assert d["auc"]["se"] == pytest.approx(0.0, abs=1e-12) and d["auc"]["exceeds_2se"] is True
    assert "random-search is better" in fc.verdict(d, "random-search", fc.PAIRED)
    # only the seeds both sides finished are paired; one seed gives no standard error
    one = fc.paired(runs[:1] + runs[3:5], "search", "random-search")
    assert one["accuracy"]["seeds"] == 1 and one["accuracy"]["exceeds_2se"] is None


def test_one_seed_gives_no_verdict_and_identical_seeds_one():
    summary = fc.summarise(_run("search", [80], [0.9], [90]) + _run("random-search", [70], [0.8], [90]))
    d = fc.against(summary)["random-search"]
    assert d["accuracy"]["exceeds_2se"] is None and "no verdict" in fc.verdict(d, "random-search")
    summary = fc.summarise(_run("search", [80, 80], [0.9, 0.9], [90, 90])
                           + _run("random-search", [80, 80], [0.8, 0.8], [90, 90]))
    d = fc.against(summary)["random-search"]
    assert d["accuracy"]["exceeds_2se"] is False and d["auc"]["exceeds_2se"] is True
    assert "no difference the seeds can resolve" in fc.verdict(d, "random-search")
    lines = fc.report_lines({"summary": summary, "models": [{"label": "search", "role": "search"},
                                                            {"label": "random-search", "role": "random-search"}],
                             "search_minus": fc.against(summary), "target_params": 1000})
    assert not any("!!" in line for line in lines) and fc.FLAG_NOTE not in lines


def test_final_train_accuracy_is_the_last_epochs(tmp_path):
    # metrics.csv grows across resumptions; the row of the highest epoch is the final one
    (tmp_path / "metrics.csv").write_text("epoch,train_acc,val_acc\n0,10.0,50\n1,20.5,55\n2,31.0,60\n")
    assert fc.final_train_accuracy(tmp_path, {}) == pytest.approx(31.0)
    assert fc.final_train_accuracy(tmp_path, {"history": [{"train_acc": 5.0}, {"train_acc": 77.0}]}) == 77.0
    assert fc.final_train_accuracy(tmp_path / "missing", {}) is None


def test_size_curve_and_baselines_options_are_checked():
    assert fc.parse_multiples("0.25,0.5,1,2,4") == [0.25, 0.5, 1.0, 2.0, 4.0]
    assert fc.parse_multiples(None) == []
    for bad in ("0,1", "1,1", "a,b"):
        with pytest.raises(SystemExit):
            fc.parse_multiples(bad)
    assert fc.parse_baselines("mobilefacenet,iresnet18") == ["mobilefacenet", "iresnet18"]
    with pytest.raises(SystemExit):
        fc.parse_baselines("resnet9000")


TINY = ["faces.train.epochs=1", "faces.train.warmup_epochs=0", "faces.data.size=32",
        "faces.data.synthetic.identities=24", "faces.data.synthetic.images_per_identity=4",
        "faces.data.heldout_identities=6", "faces.data.test_identities=6", "faces.data.heldout_pairs_per_fold=2",
        "faces.data.test_pairs_per_fold=2"]


@pytest.mark.slow
def test_end_to_end_on_synthetic_faces_then_resumed_without_training(tmp_path):
    """configs/train/faces-synthetic.yaml shrunk to 1 epoch on 24 small generated people, 1 seed: the search's
    result, random search's and one random net of the space, with a size curve at x1 whose two points are trainings
    of the comparison itself (the scaled body is the search's result, the random draw random-0): 3 trainings."""
    search = write_arch(tmp_path / "search.json", 8, 4, (0, 0, 0, 0), (3, 3, 3, 3))
    rival = write_arch(tmp_path / "rival.json", 8, 4, (0, 1, 0, 0), (3, 3, 3, 3))
    out, plot = tmp_path / "compare.json", tmp_path / "curve.png"
    cmd = [sys.executable, str(SCRIPT), "--arch", str(search), "--random-search", str(rival), "-c",
           "configs/train/faces-synthetic.yaml", "--seeds", "1", "--random", "1", "--baselines", "",
           "--size-curve", "1", "--size-curve-seeds", "1", "--jobs", "2", "--runs", str(tmp_path / "runs"),
           "--out", str(out), "--plot", str(plot), *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("done in") == 3 and "3 trainings (0 already done)" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert list(summary) == ["search", "random-search", "random-0"]
    for s in [*summary.values(), *result["size_curve"]["points"]]:
        assert 0 <= s["train_accuracy"]["mean"] <= 100 and s["trained"] in (True, False)
    assert 0 <= summary["search"]["accuracy"]["mean"] <= 100 and summary["search"]["macs"] > 0
    assert result["search_vs_random_search"]["accuracy"]["difference"] == pytest.approx(
        summary["search"]["accuracy"]["mean"] - summary["random-search"]["accuracy"]["mean"])
    assert "search - random-search" in result["search_vs_random_search"]["verdict"]
    assert result["search_minus_paired"]["random-search"]["accuracy"]["difference"] == pytest.approx(
        result["search_vs_random_search"]["accuracy"]["difference"])  # one seed: the same difference
    assert fc.PAIRED in result["search_vs_random_search"]["verdict_paired"] and fc.PAIRED in done.stdout
    points = {p["kind"]: p for p in result["size_curve"]["points"]}
    assert points["search-scaled"]["runs_as"] == "search" and points["random"]["runs_as"] == "random-0"
    assert points["search-scaled"]["accuracy"] == summary["search"]["accuracy"]
    assert points["random"]["train_accuracy"] == summary["random-0"]["train_accuracy"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train acc" in done.stdout and "size curve" in done.stdout
    # the same command again: every training is found finished, nothing is trained, the figures are the same
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "done in" not in again.stdout and "3 trainings (3 already done)" in again.stdout
    assert json.loads(out.read_text())["summary"] == summary
    # --dry-run on a comparison under way: the scores so far, from the finished trainings only
    report = tmp_path / "runs" / "random-0" / "seed0" / "report.json"
    report.rename(report.with_suffix(".json.aside"))
    partial = subprocess.run([*cmd, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert partial.returncode == 0 and "3 trainings (2 already done)" in partial.stdout, partial.stderr[-3000:]
    so_far = {line.split()[2]: line.split()[3:] for line in partial.stdout.splitlines()
              if line.startswith("so far: ") and line.split()[3].isdigit()}
    assert so_far["random-0"] == ["0"] and so_far["search"][0] == "1"
    assert float(so_far["search"][1]) == pytest.approx(summary["search"]["accuracy"]["mean"], abs=0.01)
    assert "so far: search - random-search" in partial.stdout and "no verdict" in partial.stdout
    report.with_suffix(".json.aside").rename(report)
    # --latency: each compared model's seed-0 file timed on the config's search.target, printed beside its scores
    timed = subprocess.run([*cmd, "--latency", "--set", "search.target.repeats=5"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert timed.returncode == 0, timed.stderr[-3000:]
    latency = json.loads(out.read_text())["latency"]
    assert set(latency) == set(summary) and all(t["median_ms"] > 0 and t["repeats"] == 5 for t in latency.values())
    assert "latency ms" in timed.stdout
    # another comparison in the same run folder: its models' folders hold other nets, which it must not report
    swapped = [*cmd[:3], str(rival), "--random-search", str(search), *cmd[6:]]
    clash = subprocess.run(swapped, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert clash.returncode != 0 and "give this one its own --runs" in clash.stderr, clash.stderr[-3000:]
