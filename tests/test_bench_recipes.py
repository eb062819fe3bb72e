"""bench/face_recipes.py, the face training recipes of issue 19: every recipe shipped applies to the face configs
it was tried with, the seeds are paired across recipes, and the table marks the nets that did not train."""

from __future__ import annotations

import importlib.util

import pytest

from facenas.config import load_config
from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "face_recipes.py"
RECIPES = ROOT / "configs" / "experiments" / "face-recipes.yaml"
_spec = importlib.util.spec_from_file_location("face_recipes", SCRIPT)
fr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fr)


@pytest.mark.parametrize("name", list(fr.read_recipes(RECIPES, [])))
def test_every_shipped_recipe_is_a_valid_override_of_the_lfw_dev_config(name):
    recipe = fr.read_recipes(RECIPES, [name])[name]
    assert recipe["about"]
    config = load_config(RECIPES.parent / "faces-lfw-dev-first-recipe.yaml", recipe["set"])
    for key, value in recipe["set"].items():
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value


def test_an_unknown_recipe_is_named():
    with pytest.raises(SystemExit, match="has no recipe nope"):
        fr.read_recipes(RECIPES, ["nope"])


def test_seeds_are_paired_across_recipes_and_differ_across_architectures():
    assert fr.train_seed(0, "D4 C8 ops 0000 k 3333") == fr.train_seed(0, "D4 C8 ops 0000 k 3333")
    assert fr.train_seed(0, "D4 C8 ops 0000 k 3333") != fr.train_seed(0, "D5 C8 ops 00000 k 33333")
    assert fr.train_seed(0, "D4 C8 ops 0000 k 3333") != fr.train_seed(1, "D4 C8 ops 0000 k 3333")


def test_the_table_marks_nets_below_half_train_accuracy():
    def run(recipe, train, score, status="finished"):
        return {"recipe": recipe, "arch": "D4 C8 ops 0100 k 3333" + (" +res" if recipe == "shortcut" else ""),
                "depth": 4, "width": 8, "conv_layers": 1, "params": 16544, "train_acc": train, "score": score,
                "status": status, "error": None if status == "finished" else "NaN loss"}

    lines = fr.table([run("arcface", 12.0, 60.0), run("shortcut", 88.0, 93.5), run("cosface", None, None, "failed")])
    assert lines.splitlines()[0] == "| recipe | D4 C8, 1 convs, 17k |"  # one column: the shortcut is the recipe's
    rows = {line.split(" | ")[0].strip("| "): line for line in lines.splitlines()[2:]}
    assert "**12.0** / 60.0" in rows["arcface"] and "88.0 / 93.5" in rows["shortcut"]
    assert "**" not in rows["shortcut"] and "failed (NaN loss)" in rows["cosface"]
