"""Run configs: plain Python files with get_config(arg) (big_vision style).

The repository's configs/ folder is installed as this package, `jaxvna.configs` (see
setup.py). A config builds on another by importing it (`from jaxvna.configs import
vna_sim`), which works the same from the repository, from an installed copy and from a
config file of your own anywhere.

Every config has a `tiny` variant, selected by an argument that is or ends with "tiny":
`get_config("tiny")`, `vna_sim.get_config("direct_encoding,tiny")`, on the command line
`--config=configs/dina_sim.py:tiny`. It is the same run with small data, models and step
counts (a minute or less on a laptop's CPU), for tests, notebooks and a first try.

`common` is no run: it holds the model blocks the configs share, every field at its
default.
"""

from __future__ import annotations

import pathlib


def configs_dir() -> pathlib.Path:
  """The folder of the shipped config files."""
  return pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  """The shipped run configs (the modules with a get_config), sorted."""
  return sorted(p.stem for p in configs_dir().glob("*.py")
                if not p.stem.startswith("_") and p.stem != "common")


def split_tiny(arg: str | None) -> tuple[str | None, bool]:
  """Splits get_config's argument: "VALUE,tiny" -> (VALUE, True), "tiny" -> (None, True),
  anything else -> (arg, False)."""
  if arg is None:
    return None, False
  value, _, last = arg.rpartition(",")
  if last == "tiny":
    return value or None, True
  return arg, False


def only_tiny(arg: str | None, config: str) -> bool:
  """Whether `arg` selects the tiny variant of a config that takes no other argument."""
  if arg not in (None, "tiny"):
    raise ValueError(f"{config}: unknown argument {arg!r}; expected 'tiny' or none")
  return arg == "tiny"
