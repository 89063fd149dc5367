"""`jaxvna reproduce <name>`: re-run the command that wrote a result file, and compare.

  jaxvna reproduce demo                  results/demo.json (run from the repository root)
  jaxvna reproduce path/to/results.json
  jaxvna reproduce v4 --dry_run          print the command only

Every result file names the command that wrote it (`provenance.command`, see
`jaxvna.training.provenance`). This runs it again in the working folder, with
$JAXVNA_DATA_DIR expanded from the environment, and prints how far each number of the new
result lies from the old one: the file itself when the command writes it again (the old
content stays in git), else the result file the command wrote in its --workdir (which it
leaves there, with the `cp` that would keep it). The file's jaxvna commit and package versions are printed beside the ones
in use, since a different JAX can move the last digits.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

from jaxvna.errors import UserError
from jaxvna.training import provenance

RESULTS_DIR = "results"
# What the commands write in their --workdir, the headline file first.
WORKDIR_RESULTS = ("new_subject.json", "scaling.json", "interpret.json", "visualize.json",
                   "results.json")


def resolve(name: str) -> pathlib.Path:
  """A result file's path: `name` itself if it is a file, else results/<name>.json."""
  path = pathlib.Path(name)
  if path.is_file():
    return path
  candidate = pathlib.Path(RESULTS_DIR) / f"{name}.json"
  if candidate.is_file():
    return candidate
  known = sorted(p.stem for p in pathlib.Path(RESULTS_DIR).glob("*.json"))
  raise UserError(f"{name}: no such result file, and no {candidate} (known in "
                  f"{RESULTS_DIR}/: {known or 'none; run from the repository root'})")


def recorded_command(path: pathlib.Path) -> str:
  """The command line stored in the file's provenance."""
  try:
    content = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise UserError(f"{path}: not a readable JSON result file ({error})") from None
  command = (content.get("provenance") or {}).get("command") if isinstance(content, dict) else None
  if not command:
    raise UserError(f"{path}: field 'provenance.command' is missing; the file was not "
                    "written by a jaxvna command that records one")
  return command


def numeric_differences(old, new, prefix: str = "") -> dict[str, tuple[float, float]]:
  """{dotted key: (old, new)} of every number that differs between two JSON trees
  ("provenance" skipped; keys present in one tree only are ignored)."""
  out = {}
  if isinstance(old, dict) and isinstance(new, dict):
    for key in old.keys() & new.keys():
      if key != "provenance":
        out |= numeric_differences(old[key], new[key], f"{prefix}{key}.")
  elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
    for i, (a, b) in enumerate(zip(old, new)):
      out |= numeric_differences(a, b, f"{prefix}{i}.")
  elif (isinstance(old, (int, float)) and isinstance(new, (int, float))
        and not isinstance(old, bool) and old != new):
    out[prefix.rstrip(".")] = (float(old), float(new))
  return out


def run(name: str, *, dry_run: bool = False) -> dict:
  """Re-runs the command of result file `name`; returns {"command", "path", "rewritten",
  "differences"} (differences: `numeric_differences` of the old and the new file)."""
  path = resolve(name)
  old = json.loads(path.read_text())
  command = recorded_command(path)
  recorded = old["provenance"]
  print(f"{path}: written by jaxvna {recorded['jaxvna'].get('commit') or recorded['jaxvna']['version']}"
        f" with {_versions(recorded.get('versions', {}))}\n"
        f"now: jaxvna {provenance.source_state().get('commit') or provenance.source_state()['version']}")
  expanded = os.path.expandvars(command)
  argv = shlex.split(expanded)
  if argv and argv[0] == "python":
    argv[0] = sys.executable  # the Python that runs jaxvna, not whichever is on PATH
  print(f"running: {command}", flush=True)
  if dry_run:
    return {"command": command, "path": str(path), "rewritten": False, "differences": {}}
  before, started = path.stat().st_mtime_ns, time.time()
  status = subprocess.run(argv, check=False).returncode
  if status:
    raise UserError(f"{path}: the recorded command exited with status {status}: {command}")
  rewritten = path.stat().st_mtime_ns != before
  new_path = path if rewritten else written_in_workdir(argv, started)
  differences = {}
  if new_path is None:
    print(f"{path} was not rewritten and the command's --workdir holds no new result file.")
  else:
    differences = numeric_differences(old, json.loads(new_path.read_text()))
    print(_difference_report(new_path, differences))
    if new_path != path:
      print(f"to keep it: cp {new_path} {path}")
  return {"command": command, "path": str(path), "rewritten": rewritten,
          "new_path": None if new_path is None else str(new_path), "differences": differences}


def written_in_workdir(argv: list[str], since: float) -> pathlib.Path | None:
  """The result file (`WORKDIR_RESULTS`) that the command wrote in its --workdir after
  `since` (a time.time()), or None."""
  workdirs = [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")]
  for name in WORKDIR_RESULTS:
    for workdir in workdirs:
      candidate = pathlib.Path(workdir) / name
      if candidate.is_file() and candidate.stat().st_mtime >= since:
        return candidate
  return None


def _versions(versions: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("jax", "flax", "optax"))


def _difference_report(path, differences: dict) -> str:
  if not differences:
    return f"{path}: reproduced exactly (every number equal)."
  worst = sorted(differences.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))
  lines = [f"{path}: {len(differences)} numbers differ; the largest changes:"]
  lines += [f"  {key}: {a:.6g} -> {b:.6g}" for key, (a, b) in worst[:15]]
  return "\n".join(lines)
