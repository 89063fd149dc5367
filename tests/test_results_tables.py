"""The README's result tables are the result files in results/, written by the commands
that produced them: a table edited by hand, or a file re-generated without its table,
fails here."""

import json
import pathlib

import pytest

from jaxvna.commands import demo

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _results(name):
  return json.loads((REPO / "results" / f"{name}.json").read_text())["results"]


def _indented(text):
  return "\n".join("    " + line for line in text.splitlines())


@pytest.mark.parametrize("name", ["demo", "v4"])
def test_readme_mean_table_is_the_result_file(name):
  """`jaxvna demo` (results/demo.json) and benchmarks/real_v4.py (results/v4.json)."""
  table = demo.results_table(_results(name))
  assert _indented(table) in README, f"README's table of results/{name}.json differs:\n{table}"


def test_readme_v4_session_table_is_the_result_file():
  table = demo.per_subject_table(_results("v4"), "10")
  assert table in README, f"README's V4 session table differs from results/v4.json:\n{table}"
  # The count the text states is the table's.
  beats = sum(row.endswith("| yes |") for row in table.splitlines())
  assert f"in {beats} of the {len(table.splitlines()) - 2} session x task cells" in README


@pytest.mark.parametrize("name", ["demo", "v4"])
def test_readme_null_control_table_is_the_result_file_and_at_chance(name):
  results = _results(name)
  table = demo.null_control_table(results)
  assert _indented(table) in README, f"README's null controls of results/{name}.json differ:\n{table}"
  # Every null row at chance but one: on the simulator, direct encoding's null decodes at
  # 2-way 0.531 (band 0.481-0.519) and at 10-way 0.1144 (band to 0.1138). The band covers
  # the query sample, not the null model's own chance alignment; a new leak elsewhere fails.
  off = {(method, task, n) for method, res in results.items()
         for task in ("decoding", "encoding")
         for n, c in res["null_control"]["chance_check"][task].items() if not c["at_chance"]}
  assert off == ({("direct_encoding", "decoding", "2"), ("direct_encoding", "decoding", "10")}
                 if name == "demo" else set())


def _result_files():
  return sorted((REPO / "results").glob("*.json"))


@pytest.mark.parametrize("path", _result_files(), ids=lambda p: p.stem)
def test_every_result_file_names_its_command_and_is_listed_in_the_readme(path):
  provenance = json.loads(path.read_text())["provenance"]
  for field in ("command", "config", "jaxvna", "versions", "data", "devices", "wall_time_s"):
    assert provenance[field] is not None, (path.name, field)
  assert provenance["jaxvna"]["commit"], path.name
  assert f"| `results/{path.name}` | `{provenance['command']}` |" in README, path.name


def test_readme_new_subject_table_is_the_result_file():
  from jaxvna.commands import new_subject
  out = json.loads((REPO / "results" / "new_subject_sim.json").read_text())
  table = new_subject.summary_table(out)
  assert _indented(table) in README, f"README's new-subject table differs:\n{table}"
