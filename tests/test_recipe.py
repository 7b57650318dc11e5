"""Recipes (``prunekit run``) and ``prunekit compare``: checked up front, planned, run, resumed, compared."""
import json
import shutil
from pathlib import Path

import pytest

from prunekit.cli import main
from prunekit.recipe import load_recipe, load_recipe_text

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "recipes").glob("*.yaml"))
FAMILIES = {"prune", "sparsify", "drop-layers", "merge", "tokens-dynamic", "finetune", "export"}


def test_there_is_an_example_for_every_verb_and_each_one_plans(capsys):
    assert len(EXAMPLES) >= 6
    assert {s.verb for p in EXAMPLES for s in load_recipe(p).steps} == FAMILIES
    for path in EXAMPLES:
        assert main(["run", str(path), "--dry-run", "--out", "RUN"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1 + len(load_recipe(path).steps), path
        assert all(line.split(". ", 1)[1].startswith("prunekit ") and line.endswith("--json") for line in lines[1:])


@pytest.mark.parametrize("text,message", [
    ("model: fmnist-resnet\nsteps:\n  - prune: {targt_macs: 0.5}\n", "steps[0].prune: unknown key 'targt_macs'"),
    ("model: fmnist-resnet\nsteps:\n  - prune: {target_macs: half}\n", "steps[0].prune: target_macs: Input should be"),
    ("model: fmnist-resnet\nsteps:\n  - prune: {criterion: l3}\n", "steps[0].prune: criterion: Input should be"),
    ("model: fmnist-resnet\nsteps:\n  - shrink: {r: 2}\n", "steps[0]: unknown verb 'shrink'"),
    ("steps:\n  - merge: {r: 2}\n", "model: give a zoo name"),
    ("model: fmnist-vit\nstep:\n  - merge: {r: 2}\n", "unknown key 'step'"),
    ("model: fmnist-vit\nmeasure: {limt: 3}\nsteps:\n  - merge: {r: 2}\n", "measure: unknown key 'limt'"),
    ("model: [\n", "not valid YAML"),
    ("model: fmnist-vit\nsteps:\n  - tokens-dynamic: {keep: 0.7}\n", "tokens-dynamic: fit_epochs is required"),
])
def test_a_bad_recipe_is_one_line_naming_the_key_and_nothing_runs(text, message, tmp_path, capsys):
    from prunekit.errors import PruningError
    with pytest.raises(PruningError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe_text(text)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quick"
    recipe = next(p for p in EXAMPLES if p.name == "structured-quick.yaml")
    assert main(["--threads", "2", "run", str(recipe), "--out", str(out)]) == 0
    return out


def test_the_smallest_recipe_runs_into_one_directory(quick_run):
    names = {p.name for p in quick_run.iterdir()}
    assert {"01-prune.safetensors", "01-prune.json", "02-finetune.safetensors", "02-finetune.json",
            "03-export.onnx", "03-export.json", "report.md", "report.html", "results.json", "run.json"} <= names
    prune = json.loads((quick_run / "01-prune.json").read_text())
    assert prune["method"] == "prune" and abs(prune["ratios"]["macs"] - 0.5) <= 0.02
    assert prune["prune"]["criterion"] == "l2" and prune["command"].startswith("prunekit prune fmnist-resnet")
    export = json.loads((quick_run / "03-export.json").read_text())
    assert export["max_abs_diff"] <= export["tolerance"] and "hints" not in export  # round_to 8: no hint
    rows = json.loads((quick_run / "results.json").read_text())
    assert [r["method"].split(" ")[0] for r in rows] == ["dense", "1.", "2."]
    dense, cut, tuned = rows
    assert tuned["macs"] == cut["macs"] < 0.52 * dense["macs"]
    assert tuned["metric"] > cut["metric"]  # the fine-tune recovered accuracy from the cut
    assert tuned["speedup"] == pytest.approx(tuned["dense_latency_ms"] / tuned["latency_ms"], abs=2e-3)


def test_resume_skips_finished_steps_and_a_used_directory_is_refused(quick_run, capsys):
    recipe = str(quick_run / "recipe.yaml")
    assert main(["run", recipe, "--out", str(quick_run)]) == 2
    assert "not empty; give --resume" in capsys.readouterr().err
    stamps = {p: p.stat().st_mtime_ns for p in quick_run.glob("0*.json")}
    assert main(["run", recipe, "--out", str(quick_run), "--resume"]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in quick_run.glob("0*.json")}


def test_compare_puts_runs_side_by_side(quick_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(quick_run, other)
    assert main(["compare", str(quick_run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert table.count("| fmnist-resnet | dense |") == 1
    assert "| fmnist-resnet | quick: 1. prune" in table and "| fmnist-resnet | other: 1. prune" in table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert main(["compare", str(tmp_path)]) == 2  # no results.json there


def test_run_and_compare_print_the_verbs_json_shape(quick_run, tmp_path, capsys):
    from prunekit.cli.common import JSON_KEYS
    capsys.readouterr()
    assert main(["run", str(quick_run / "recipe.yaml"), "--out", str(quick_run), "--resume", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(JSON_KEYS) <= set(doc) and doc["model"] == "fmnist-resnet" and doc["method"].startswith("2.")
    assert doc["macs"] < 0.52 * doc["dense"]["macs"] and doc["dense"]["method"] == "dense"
    assert doc["speedup"] == pytest.approx(doc["dense"]["latency_ms"] / doc["latency_ms"], abs=2e-3)
    assert 0 <= doc["metric"]["top1"] <= 1 and len(doc["steps"]) == 3
    assert json.loads((quick_run / "run.json").read_text())["result"]["method"] == doc["method"]
    assert main(["compare", str(quick_run), "--out", str(tmp_path / "cmp"), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["method"].split(" ")[0] for r in cmp["rows"]] == ["dense", "quick:", "quick:"]
    assert all(set(JSON_KEYS) <= set(r) for r in cmp["rows"])


def test_dry_run_and_zoo_list_print_one_json_object(capsys):
    recipe = next(p for p in EXAMPLES if p.name == "structured-quick.yaml")
    assert main(["run", str(recipe), "--dry-run", "--json", "--out", "somewhere"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and plan["commands"][0].startswith("prunekit prune fmnist-resnet")
    assert main(["zoo", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing["models"]) >= {"fmnist-resnet", "minilm"}
