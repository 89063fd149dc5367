"""`jaxvna reproduce <name>`: re-run the command that wrote a result file, and compare.

  jaxvna reproduce demo                  results/demo.json (run from the repository root)
  jaxvna reproduce path/to/results.json
  jaxvna reproduce v4 --dry_run          print the command only

Every result file names the command that wrote it (`provenance.command`, see
`jaxvna.training.provenance`). This runs it again in the working folder, with
$JAXVNA_DATA_DIR expanded from the environment, and when the command writes the same file
again, prints how far each number of the new file lies from the old one (the old content
stays in git). The file's jaxvna commit and package versions are printed beside the ones
in use, since a different JAX can move the last digits.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

from jaxvna.errors import UserError
from jaxvna.training import provenance

RESULTS_DIR = "results"


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
  before = path.stat().st_mtime_ns
  status = subprocess.run(argv, check=False).returncode
  if status:
    raise UserError(f"{path}: the recorded command exited with status {status}: {command}")
  rewritten = path.stat().st_mtime_ns != before
  differences = {}
  if rewritten:
    differences = numeric_differences(old, json.loads(path.read_text()))
    print(_difference_report(path, differences))
  else:
    print(f"{path} was not rewritten: the command writes its result elsewhere (see its "
          "--workdir); compare with `git diff --no-index`.")
  return {"command": command, "path": str(path), "rewritten": rewritten,
          "differences": differences}


def _versions(versions: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("jax", "flax", "optax"))


def _difference_report(path, differences: dict) -> str:
  if not differences:
    return f"{path}: reproduced exactly (every number equal)."
  worst = sorted(differences.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))
  lines = [f"{path}: {len(differences)} numbers differ; the largest changes:"]
  lines += [f"  {key}: {a:.6g} -> {b:.6g}" for key, (a, b) in worst[:15]]
  return "\n".join(lines)
