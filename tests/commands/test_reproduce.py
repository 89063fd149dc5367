"""`jaxvna reproduce`: finds a result file, runs the command it records, and reports how
its numbers moved; a file without a recorded command is one clear error."""

import json
import subprocess
import sys
import textwrap

import pytest

from jaxvna.commands import reproduce
from jaxvna.errors import UserError


@pytest.fixture
def repo(tmp_path, monkeypatch):
  """A folder with results/toy.json written by `python make.py` (which halves a number)."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "results").mkdir()
  (tmp_path / "make.py").write_text(textwrap.dedent("""
      import json, pathlib
      path = pathlib.Path("results/toy.json")
      old = json.loads(path.read_text())
      old["results"]["top1"] /= 2
      old["provenance"]["wall_time_s"] += 1
      path.write_text(json.dumps(old))
  """))
  content = {"results": {"top1": 0.8, "n": [1, 2]},
             "provenance": {"command": "python make.py", "wall_time_s": 1.0,
                            "jaxvna": {"version": "0.1.0", "commit": None},
                            "versions": {"jax": "x"}}}
  (tmp_path / "results" / "toy.json").write_text(json.dumps(content))
  return tmp_path


def test_reproduce_runs_the_recorded_command_and_reports_the_changes(repo, capsys):
  out = reproduce.run("toy")
  assert out["rewritten"] and out["command"] == "python make.py"
  assert out["differences"] == {"results.top1": (0.8, 0.4)}  # provenance is not compared
  assert "results.top1: 0.8 -> 0.4" in capsys.readouterr().out


def test_dry_run_changes_nothing(repo):
  before = (repo / "results" / "toy.json").read_text()
  assert not reproduce.run(str(repo / "results" / "toy.json"), dry_run=True)["rewritten"]
  assert (repo / "results" / "toy.json").read_text() == before


def test_unknown_name_and_missing_provenance_are_one_line_errors(repo):
  with pytest.raises(UserError, match=r"no results/nothing.json \(known in results/: \['toy'\]"):
    reproduce.run("nothing")
  (repo / "results" / "bare.json").write_text(json.dumps({"results": {}}))
  with pytest.raises(UserError, match="field 'provenance.command' is missing"):
    reproduce.run("bare")


def test_cli_prints_the_recorded_command(repo):
  out = subprocess.run([sys.executable, "-m", "jaxvna.cli", "reproduce", "toy", "--dry_run"],
                       capture_output=True, text=True, cwd=repo)
  assert out.returncode == 0, out.stderr
  assert "running: python make.py" in out.stdout
  bad = subprocess.run([sys.executable, "-m", "jaxvna.cli", "reproduce", "nothing"],
                       capture_output=True, text=True, cwd=repo)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_a_result_written_in_the_workdir_is_compared(repo):
  """`jaxvna train --workdir=W`-style commands: the new file is W/results.json."""
  (repo / "train.py").write_text(textwrap.dedent("""
      import json, pathlib
      old = json.loads(pathlib.Path("results/toy.json").read_text())
      old["results"]["n"][1] = 3
      pathlib.Path("W").mkdir(exist_ok=True)
      pathlib.Path("W/results.json").write_text(json.dumps(old))
  """))
  content = json.loads((repo / "results" / "toy.json").read_text())
  content["provenance"]["command"] = "python train.py --workdir=W"
  (repo / "results" / "toy.json").write_text(json.dumps(content))
  out = reproduce.run("toy")
  assert not out["rewritten"] and out["new_path"] == "W/results.json"
  assert out["differences"] == {"results.n.1": (2.0, 3.0)}
