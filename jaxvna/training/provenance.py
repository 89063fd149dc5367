"""What a result file says of the run that wrote it: enough to trust it and to re-run it.

Every command that writes a headline result (`jaxvna train`, `eval`, `demo`, `scaling`,
DINA's `interpret`, MIG-Vis' `visualize`) puts `record(...)` under the file's
"provenance" key:

  command      the command line that wrote the file, as typed (`jaxvna reproduce` runs it)
  config       the resolved run config
  jaxvna       {"version", "commit", "dirty"}: commit and dirtiness of the checkout the
               package was imported from (None when it is not a git checkout)
  versions     python, jax, jaxlib, flax, optax, orbax-checkpoint, numpy
  data         {"name", "recordings", "fingerprint"}: `data.dataset.fingerprint`
  devices      {"platform", "kind", "count", "processes"}
  wall_time_s  seconds from the command's start to the file
  finished     UTC time the file was written (ISO 8601)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

from jaxvna.data import dataset as dataset_lib

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def command_line(argv: list[str] | None = None) -> str:
  """The command that is running, as a user would type it again from the same folder:
  `jaxvna <verb> ...` for the CLI, `python <script> ...` for a script (its path relative
  to the working folder where it lies below it)."""
  argv = list(sys.argv if argv is None else argv)
  if not argv:
    return ""
  head = argv[0]
  package = pathlib.Path(__file__).resolve().parents[1]
  if head.endswith(".py") and pathlib.Path(head).resolve().parent == package:
    return shlex.join(["jaxvna", *argv[1:]])  # python -m jaxvna.cli
  if head.endswith(".py"):
    path = pathlib.Path(head).resolve()
    try:
      head = str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
      head = path.name
    return shlex.join(["python", head, *argv[1:]])
  if pathlib.Path(head).name == "jaxvna":
    return shlex.join(["jaxvna", *argv[1:]])
  return shlex.join(argv)


def config_overrides(command: str, *, drop: tuple[str, ...] = ()) -> str:
  """The `--config.<field>=<value>` flags of a recorded command line, in order, as typed
  (those of the fields in `drop` left out): what one run of a sweep changed.

  >>> config_overrides("jaxvna train --config=c.py --workdir=W --config.seed=1 --force")
  '--config.seed=1'
  """
  flags = [arg for arg in shlex.split(command) if arg.startswith("--config.")]
  return " ".join(shlex.quote(f) for f in flags
                  if f.split("=", 1)[0].removeprefix("--config.") not in drop)


def portable(text: str) -> str:
  """`text` with this machine's data folder ($JAXVNA_DATA_DIR), working folder and home
  written as those names, so that a result file reads the same on every machine."""
  for value, name in ((os.environ.get("JAXVNA_DATA_DIR"), "$JAXVNA_DATA_DIR"),
                      (str(pathlib.Path.cwd()), "."), (str(pathlib.Path.home()), "~")):
    if value and len(value) > 1:
      text = text.replace(value.rstrip("/"), name)
  return text


def source_state() -> dict:
  """{"version", "commit", "dirty"} of the jaxvna that is imported."""
  root = pathlib.Path(__file__).resolve().parents[2]  # above the jaxvna package
  state = {"version": _version("jaxvna"), "commit": None, "dirty": None}
  if not (root / ".git").exists():
    return state  # an installed package: its version says what it is
  try:
    git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
    state["commit"] = git("rev-parse", "HEAD")
    # The code only: result files and figures rewritten beside it do not change a run.
    state["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no", "--",
                              "jaxvna", "configs", "benchmarks/*.py", "setup.py",
                              "pyproject.toml"))
  except (OSError, subprocess.SubprocessError):
    pass
  return state


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def record(config, dataset, *, started: float, command: str | None = None) -> dict:
  """The provenance of a result (see the module docstring).

  Args:
    config: the run's ml_collections config.
    dataset: the `Dataset` the result was computed from (all of it, held-out subjects
      included), or None.
    started: `time.time()` when the command began.
    command: the command line; default `command_line()`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      "command": portable(command_line() if command is None else command),
      "config": json.loads(portable(config.to_json_best_effort())),
      "jaxvna": source_state(),
      "versions": {"python": platform.python_version()} | {p: _version(p) for p in _PACKAGES},
      "data": None if dataset is None else {
          "name": dataset.name, "recordings": [r.name for r in dataset.recordings],
          "fingerprint": dataset_lib.fingerprint(dataset)},
      "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                  "count": len(devices), "processes": jax.process_count()},
      "cpu_count": os.cpu_count(),
      "wall_time_s": round(time.time() - started, 2),
      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
