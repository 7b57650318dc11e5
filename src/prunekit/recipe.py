"""Recipes: a YAML file that chains prunekit verbs, run into one directory with a JSON per step and a report.

A recipe names the model and a list of steps; each step is one verb (``prune``, ``sparsify``,
``drop-layers``, ``merge``, ``tokens-dynamic`` (``prunekit tokens dynamic``), ``finetune``,
``export``) with that verb's command-line options as keys (``target_macs: 0.5`` is
``--target-macs 0.5``, ``distill: true`` is ``--distill``). Each step reads
the model the step before wrote, so a recipe is exactly the chain of commands ``--dry-run`` prints.
``teacher: dense`` (finetune) distils from the recipe's input model. ``measure`` sets ``limit``,
``repeats`` and ``throughput_batch`` for every step that measures.

The schema comes from the verbs' own parsers, so the recipe and the command line share one
vocabulary; :func:`load_recipe` checks everything before any model is built and names the bad key.

>>> plan = load_recipe_text('''
... model: fmnist-resnet
... measure: {limit: 200}
... steps:
...   - prune: {target_macs: 0.5}
...   - finetune: {epochs: 0.1, teacher: dense}
... ''')
>>> for argv in plan.commands("RUN"): print(" ".join(argv))
prunekit prune fmnist-resnet --target-macs 0.5 --limit 200 --out RUN/01-prune.safetensors --json
prunekit finetune RUN/01-prune.safetensors --epochs 0.1 --teacher fmnist-resnet --out RUN/02-finetune.safetensors --json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from prunekit.errors import PruningError

__all__ = ["Recipe", "load_recipe", "load_recipe_text", "run_recipe", "VERBS"]

VERBS = ("prune", "sparsify", "drop-layers", "merge", "tokens-dynamic", "finetune", "export")
# recipe verbs that are a subcommand of a command-line verb: tokens-dynamic is `prunekit tokens dynamic`
_NESTED = {"tokens-dynamic": ("tokens", "dynamic")}
# options the runner sets itself: the model (positional), where each step writes, the JSON output
_MANAGED = {"model", "out", "json", "func", "checkpoint_dir", "resume"}
_MEASURE = ("limit", "repeats", "throughput_batch")
_FAMILY = {"prune": "structured", "sparsify": "sparsity", "drop-layers": "drop blocks", "merge": "ToMe",
           "tokens-dynamic": "token pruning"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from prunekit.cli import build_parser
    def sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)
    parsers = sub(build_parser())
    for verb, (top, name) in _NESTED.items():
        parsers[verb] = sub(parsers[top])[name]
    return parsers


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _MANAGED | {"help"}}


def _schema(verb: str, parser: argparse.ArgumentParser):
    """A pydantic model of ``verb``'s options (unknown keys refused)."""
    from pydantic import ConfigDict, create_model
    fields = {}
    for dest, a in _options(parser).items():
        if isinstance(a, argparse._StoreTrueAction):
            kind: Any = bool
        elif a.choices:
            kind = Literal[tuple(a.choices)]
        else:
            kind = {float: float, int: int}.get(a.type, str)
        fields[dest] = (Optional[kind], None)  # noqa: UP045 - pydantic needs the runtime form here
    return create_model(f"{verb}_options", __config__=ConfigDict(extra="forbid", strict=False), **fields)


@dataclass
class Step:
    verb: str
    options: dict

    @property
    def writes(self) -> str:
        return ".onnx" if self.verb == "export" else ".safetensors"


@dataclass
class Recipe:
    """A checked recipe: the input ``model``, its ``steps`` and the ``measure`` options."""

    model: str
    steps: list[Step]
    measure: dict = field(default_factory=dict)
    source: str = ""

    def outputs(self, run_dir: str | Path) -> list[str]:
        return [f"{run_dir}/{i + 1:02d}-{s.verb}{s.writes}" for i, s in enumerate(self.steps)]

    def commands(self, run_dir: str | Path) -> list[list[str]]:
        """The ``prunekit`` command line of every step, in order."""
        parsers = _subparsers()
        cmds, current = [], self.model
        for step, out in zip(self.steps, self.outputs(run_dir), strict=True):
            opts = _options(parsers[step.verb])
            argv = ["prunekit", *_NESTED.get(step.verb, (step.verb,)), current]
            merged = {**step.options, **{k: v for k, v in self.measure.items() if k in opts and k not in step.options}}
            for dest, value in merged.items():
                if value is None or value is False:
                    continue
                if dest == "teacher" and value == "dense":
                    value = self.model
                flag = next(o for o in opts[dest].option_strings if o.startswith("--"))
                argv += [flag] if value is True else [flag, str(value)]
            cmds.append([*argv, "--out", out, "--json"])
            if step.verb != "export":
                current = out
        return cmds


def _fail(where: str, msg: str):
    raise PruningError(where, "read the recipe", msg)


def load_recipe_text(text: str, where: str = "recipe") -> Recipe:
    """Check a recipe given as YAML text; every error is one line naming the key."""
    import yaml
    from pydantic import ValidationError
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        _fail(where, f"not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(doc, dict):
        _fail(where, "expected a mapping with the keys model and steps")
    unknown = sorted(set(doc) - {"model", "steps", "measure"})
    if unknown:
        _fail(where, f"unknown key {unknown[0]!r}; a recipe has model, steps and measure")
    if not isinstance(doc.get("model"), str):
        _fail(where, "model: give a zoo name, timm:<name>, hf:<dir> or a saved model path")
    measure = doc.get("measure") or {}
    if not isinstance(measure, dict) or set(measure) - set(_MEASURE):
        bad = sorted(set(measure) - set(_MEASURE)) if isinstance(measure, dict) else [measure]
        _fail(where, f"measure: unknown key {bad[0]!r}; known: {list(_MEASURE)}")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        _fail(where, "steps: give a list of steps, e.g. - prune: {target_macs: 0.5}")
    parsers = _subparsers()
    checked = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict) or len(raw) != 1:
            _fail(where, f"steps[{i}]: each step is one verb with its options, e.g. - merge: {{r: 8}}")
        (verb, options), = raw.items()
        verb = str(verb).replace("_", "-")
        if verb not in VERBS:
            _fail(where, f"steps[{i}]: unknown verb {verb!r}; known: {list(VERBS)}")
        options = {str(k).replace("-", "_"): v for k, v in (options or {}).items()}
        try:
            clean = _schema(verb, parsers[verb]).model_validate(options).model_dump(exclude_none=True)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            msg = (f"unknown key {key!r}; known: {sorted(_options(parsers[verb]))}" if err["type"] == "extra_forbidden"
                   else f"{key}: {err['msg']}")
            _fail(where, f"steps[{i}].{verb}: {msg}")
        missing = [d for d, a in _options(parsers[verb]).items() if a.required and d not in clean]
        if missing:
            _fail(where, f"steps[{i}].{verb}: {missing[0]} is required (e.g. {missing[0]}: 1)")
        checked.append(Step(verb, {k: options[k] if k in options else v for k, v in clean.items()}))
    return Recipe(doc["model"], checked, measure, text)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check the recipe at ``path``."""
    p = Path(path)
    if not p.is_file():
        _fail(str(path), "no such file; give the path of a recipe .yaml")
    return load_recipe_text(p.read_text(), str(path))


def _run_step(argv: list[str]) -> dict:
    """Run one step through the command line itself; its JSON, or a PruningError naming the step."""
    from prunekit.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv[1:])
    if code != 0:
        line = (err.getvalue().strip().splitlines() or [f"exit code {code}"])[-1]
        raise PruningError(" ".join(argv[:2]), "run the recipe step", line)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Run every step into ``run_dir`` (a JSON per step beside each model), then measure each model
    the steps wrote against the recipe's input model in one run and write the report. With
    ``resume``, steps whose JSON and output are already there are not run again."""
    from tqdm import tqdm
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise PruningError(str(run_dir), "run the recipe", "the directory is not empty; give --resume to continue "
                           "that run, or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe.source)
    cmds, outs = recipe.commands(run_dir), recipe.outputs(run_dir)
    results = []
    for argv, out in tqdm(list(zip(cmds, outs, strict=True)), desc="recipe", disable=not progress):
        doc_path = Path(out).with_suffix(".json")
        if resume and doc_path.is_file() and Path(out).exists():
            results.append(json.loads(doc_path.read_text()))
            continue
        t0 = time.time()
        doc = _run_step(argv)
        doc["command"], doc["seconds_step"] = " ".join(argv), round(time.time() - t0, 2)
        doc_path.write_text(json.dumps(doc, indent=2))
        results.append(doc)
    rows = _report_rows(recipe, outs)
    from prunekit.report import write_report
    header = (f"Recipe {recipe.model}: " + " → ".join(s.verb for s in recipe.steps) + ". Each model the steps "
              "wrote is timed against the input model in 3 interleaved rounds of one run and evaluated the same way.")
    report = write_report(rows, run_dir, header)
    from prunekit.cli.common import row_json
    summary = {"model": recipe.model, "steps": [{"command": d.get("command"), "json": str(Path(o).with_suffix(".json"))}
                                                 for d, o in zip(results, outs, strict=True)], "report": str(report),
               "result": {**row_json(rows[-1], rows[0]), "model": recipe.model}}
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    return summary


def _report_rows(recipe: Recipe, outs: list[str]) -> list[dict]:
    """One row for the input model and one per model file the steps wrote, all measured against the
    input model with the same evaluator."""
    import prunekit
    from prunekit.cli.common import resolve_model
    from prunekit.measure import count_macs, count_params, paired_timings
    wl = resolve_model(recipe.model)
    limit = recipe.measure.get("limit")
    repeats = recipe.measure.get("repeats", 5)
    tb = recipe.measure.get("throughput_batch", 32)

    def row(method, family, model):
        model.eval()
        metric = wl.evaluate(model, limit=limit) if wl.metric_key else {}
        return {"model": wl.name, "method": method, "family": family, "params": count_params(model),
                "macs": count_macs(model, wl.example_inputs), "metric_name": wl.metric_key or "metric",
                "metric": metric.get(wl.metric_key), **paired_timings(wl.model, model, wl.example_inputs,
                                                                      repeats=repeats, throughput_batch=tb)}
    rows = [row("dense", "dense", wl.model)]
    family, label = "dense", []
    for i, (step, out) in enumerate(zip(recipe.steps, outs, strict=True)):
        opts = " ".join(f"{k}={v}" for k, v in step.options.items() if k not in _MEASURE)
        label.append(f"{step.verb} {opts}".strip())
        if step.verb == "merge" and (step.options.get("windows") or step.options.get("tubes")):
            family = "local merge"
        else:
            family = _FAMILY.get(step.verb, family)
        if step.verb == "export":
            continue
        rows.append(row(f"{i + 1}. " + " → ".join(label), family, prunekit.load(out)))
    return rows
