import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _rerun():
    spec = importlib.util.spec_from_file_location("rerun", BENCH / "rerun.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_recorded_result_has_a_command_that_rerun_can_run():
    rerun = _rerun()
    cmds = rerun.recorded_commands()
    stems = {p.stem for p in (BENCH / "results").glob("*.json") if "command" in json.loads(p.read_text())}
    assert set(cmds) == stems and "zoo" in cmds
    for argv in cmds.values():
        assert argv[0] == sys.executable and argv[1].startswith("benchmarks/bench_")
        assert (rerun.ROOT / argv[1]).is_file()
    # tome_vit_small was recorded from inside benchmarks/; it is resolved all the same
    assert cmds["tome_vit_small"][1] == "benchmarks/bench_tome_vit_small.py"
    assert cmds["zoo"][2:] == ["--threads", "2", "--batch", "64"]


def test_rerun_names_a_broken_record(tmp_path):
    rerun = _rerun()
    (tmp_path / "x.json").write_text(json.dumps({"command": "python benchmarks/bench_nothing.py --a 1"}))
    with pytest.raises(FileNotFoundError, match="x.json: script 'benchmarks/bench_nothing.py'"):
        rerun.recorded_commands(tmp_path)
    with pytest.raises(SystemExit, match="no recorded result named \\['nope'\\]"):
        rerun.recorded_commands(BENCH / "results", only=["nope"])
