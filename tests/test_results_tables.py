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
