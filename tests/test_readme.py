"""The README's promises point at tests that exist."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
  text = (REPO / "README.md").read_text()
  start = text.index(f"## {title}")
  end = text.find("\n## ", start + 1)
  return text[start:end if end != -1 else None]


def test_every_test_named_by_the_reliability_table_exists():
  rows = [l for l in _section("Reliability").splitlines() if l.startswith("| ") and "`" in l]
  assert len(rows) >= 10
  modules = {p.stem: p.read_text() for p in (REPO / "tests").rglob("test_*.py")}
  for row in rows:
    checked_by = row.rstrip(" |").rsplit(" | ", 1)[1]
    module = None
    names = re.findall(r"`([\w:]+)`", checked_by)
    assert names, row
    for name in names:
      if "::" in name:
        prefix, test = name.split("::")
        module = prefix or module
        assert module in modules, (module, row)
        assert f"def {test}(" in modules[module], (name, row)
      else:
        assert name in modules, (name, row)
