"""A measured value against its target (docs: science.md), as summary tables show it."""

from __future__ import annotations


def target_cells(value: float, target: float | None) -> str:
  """The "target | verdict" cells of a markdown row: ">= t | met" or ">= t | NOT met" (a
  target is a floor), and two empty cells for a value without a target."""
  if target is None:
    return " | "
  return f">= {target} | {'met' if value >= target else 'NOT met'}"
