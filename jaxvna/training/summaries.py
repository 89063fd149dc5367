"""What a run records besides its JSON files: TensorBoard events and profiler traces.

TensorBoard. Every run writes event files (`events.out.tfevents.*`) into its workdir,
beside metrics.jsonl, so that `tensorboard --logdir W` shows it; the runs a command trains
in sub-folders (`demo`'s W/<method>, `scaling`'s W/<fraction>, `visualize`'s W/<stage>)
appear as runs named after their folders. Tags:

  train/<column>   every column of a metrics.jsonl row (loss, grad_norm, skipped_steps,
                   learning_rate, the temperature of the contrastive methods, ...) at its
                   step, the same number (as float32);
  <kind>/<a>/<b>   every number of a results file at the path of dict keys that leads to
                   it (kind "eval" for results.json, "interpret", "scaling",
                   "visualize"); booleans as 0/1; lists, strings and None stay in the JSON
                   file only (curves, rankings, confidence intervals);
  figures/<stem>   each PNG figure the run writes, as an RGB image.

Results and figures are written at the step of the parameters they come from: the run's
last step (`trained_step`; `jaxvna eval`: the restored checkpoint's), `train.steps` for
what `demo` and `scaling` combine from their runs, the diffusion stage's steps for
`visualize` (evaluating a run again adds a second point at the same step). Only process 0
writes. The writer is tensorboardX (protobuf only, no TensorFlow), imported when a run
first writes, so `import jaxvna` stays light. A resumed run purges (TensorBoard's
`SessionLog.START` at the checkpoint's step + 1) what an earlier attempt logged after its
last checkpoint, as metrics.jsonl drops those rows.

Profiles. `train.profile_steps = "A:B"` (CLI `--profile_steps=A:B`) captures a
`jax.profiler` trace of training steps A to B (1-based, both included: step s is the s-th
update, the step of metrics.jsonl) into W/profile/plugins/profile/<time>/: an
`*.xplane.pb` for TensorBoard's profile plugin and a `perfetto_trace.json.gz` for
ui.perfetto.dev. Each jitted call of the loop is a `StepTraceAnnotation("train",
step_num=<its first step>)`. Only process 0 traces. "" (the default) captures nothing.
"""

from __future__ import annotations

import itertools
import json
import numbers
import os
import pathlib
import re
from typing import Any, Iterable, Mapping

import numpy as np

from jaxvna.errors import ConfigError
from jaxvna.training import distributed

PROFILE_DIR = "profile"
FIGURE_SUFFIX = ".png"

# Orders this process's event files written within one second (their names start with the
# time in seconds): TensorBoard reads a folder's files in name order.
_file_numbers = itertools.count()
# tensorboardX writes events from a thread that flushes the file this often (its default,
# 120 s, would hide a run's progress from a live TensorBoard for minutes).
FLUSH_SECONDS = 5


class EventWriter:
  """TensorBoard events appended to `workdir` (a new event file per writer).

  In processes other than 0 every method does nothing.

  Args:
    workdir: the run's folder.
    purge_after: the step a resumed run restarts from: TensorBoard then ignores what
      earlier attempts logged at later steps. None: nothing is purged (results and
      figures added to a finished run).
  """

  def __init__(self, workdir: str | os.PathLike, *, purge_after: int | None = None):
    self._writer = None
    if not distributed.is_primary():
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._writer = SummaryWriter(
        str(workdir), purge_step=None if purge_after is None else purge_after + 1,
        flush_secs=FLUSH_SECONDS, filename_suffix=f".{os.getpid()}.{next(_file_numbers):04d}")

  def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "train") -> None:
    """Each value at `prefix/<name>` (on disk within `FLUSH_SECONDS`, all by `close`)."""
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(f"{prefix}/{name}", float(value), step)

  def results(self, step: int, results: Mapping[str, Any], kind: str) -> None:
    """Every number of the nested `results` at `kind/<key>/<key>/...` (`flatten_numbers`)."""
    if self._writer is None:
      return
    for tag, value in flatten_numbers(results, kind).items():
      self._writer.add_scalar(tag, value, step)

  def figures(self, step: int, paths: Iterable[str | os.PathLike]) -> None:
    """Each PNG file at `figures/<its stem>`, as RGB."""
    if self._writer is None:
      return
    from PIL import Image  # pylint: disable=import-outside-toplevel
    for path in map(pathlib.Path, paths):
      with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
      self._writer.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")

  def close(self) -> None:
    """Writes every pending event and closes the file."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> "EventWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def flatten_numbers(tree: Any, prefix: str) -> dict[str, float]:
  """{"prefix/a/b": value} for every number of a nested mapping (JSON-like results);
  booleans become 0.0/1.0; lists, strings and None are left out."""
  out = {}

  def walk(node, path):
    if isinstance(node, Mapping):
      for key, value in node.items():
        walk(value, f"{path}/{key}")
    elif isinstance(node, (bool, np.bool_, numbers.Real)):
      out[path] = float(node)

  walk(tree, prefix)
  return out


def write_outputs(workdir: str | os.PathLike, step: int, *,
                  results: Mapping[str, Mapping[str, Any]] | None = None,
                  figures: Iterable[str | os.PathLike] = ()) -> None:
  """Adds a run's results ({kind: nested numbers}) and PNG figures to its events at `step`
  (process 0 only)."""
  if not distributed.is_primary():
    return
  with EventWriter(workdir) as writer:
    for kind, tree in (results or {}).items():
      writer.results(step, tree, kind)
    writer.figures(step, figures)


def trained_step(workdir: str | os.PathLike) -> int:
  """The step a workdir's training ended at (its summary.json), 0 if it has none."""
  path = pathlib.Path(workdir) / "summary.json"
  try:
    return int(json.loads(path.read_text())["steps"])
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    return 0


def figure_times(workdir: str | os.PathLike) -> dict[pathlib.Path, int]:
  """{PNG in workdir: its modification time}, to find the figures a stage then writes."""
  return {p: p.stat().st_mtime_ns for p in pathlib.Path(workdir).glob(f"*{FIGURE_SUFFIX}")}


def figures_written_since(workdir: str | os.PathLike, before: Mapping[pathlib.Path, int]
                          ) -> list[pathlib.Path]:
  """The PNGs of workdir that are new or rewritten since `before = figure_times(workdir)`."""
  return sorted(p for p, t in figure_times(workdir).items() if before.get(p) != t)


# ----------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------

_PROFILE_STEPS = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
PROFILE_STEPS_ALLOWED = "'' (off) or 'A:B', integers with 1 <= A <= B"


def parse_profile_steps(value: Any) -> tuple[int, int] | None:
  """(A, B) of a `train.profile_steps` value "A:B"; None for "" or None (no profile).

  Raises:
    ConfigError: anything else (e.g. "5:2", "5", "a:b"), naming the field.
  """
  if value is None or value == "":
    return None
  match = _PROFILE_STEPS.fullmatch(value) if isinstance(value, str) else None
  if match is None or not 1 <= int(match[1]) <= int(match[2]):
    raise ConfigError(f"config.train.profile_steps={value!r}: expected {PROFILE_STEPS_ALLOWED}")
  return int(match[1]), int(match[2])


def profile_steps(config) -> tuple[int, int] | None:
  """(A, B) of the config's `train.profile_steps`, None when it profiles nothing."""
  return parse_profile_steps(config.train.get("profile_steps", ""))


def trace_files(workdir: str | os.PathLike) -> list[pathlib.Path]:
  """The trace files of a workdir's profiles (xplane.pb and perfetto_trace.json.gz)."""
  root = pathlib.Path(workdir) / PROFILE_DIR / "plugins" / "profile"
  return sorted(p for p in root.glob("*/*")
                if p.name.endswith((".xplane.pb", "perfetto_trace.json.gz")))
