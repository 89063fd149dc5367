"""`jaxvna compare A B`: two models on the same held-out images, paired.

  jaxvna compare W1/results.json W2/results.json --methods=vna,direct_encoding
  jaxvna compare W1 W2 --methods=vna_ensemble,direct_encoding_ensemble --n_way=10

Two models' 95% CIs in a results table cover the candidate draws of each model alone; when
two models are scored on the same images, most of that spread is shared (an image hard for
one is hard for the other), so CIs that overlap do not say the models are alike. This
compares them as a pair: for every subject and task, the difference of their exact
expected N-way top-1 (`identification.expected_success` of each query's stored rank, no
draw noise), with a 95% interval from a bootstrap over the held-out images, both models
scored on each replicate's images (`discriminative.paired_comparison`). An interval above
0 says A beats B on images like these; it does not cover training seeds.

A and B are result files (or workdirs holding results.json) of runs on the same data
(`provenance.data.fingerprint`) and split; `--methods` names the entry of each (one name:
the same method in both). Result files written before ranks were stored
(`per_subject.<name>.query_ranks`) cannot be paired. Prints a markdown table; `--out`
also writes the comparison as JSON.
"""

from __future__ import annotations

import json
import pathlib

from jaxvna import files
from jaxvna.errors import UserError

TASKS = ("decoding", "encoding")


def load(path) -> dict:
  """The content of a result file, or of `path/results.json` for a workdir."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "results.json"
  try:
    content = json.loads(path.read_text())
  except FileNotFoundError:
    raise UserError(f"{path}: no such result file") from None
  except (OSError, json.JSONDecodeError) as error:
    raise UserError(f"{path}: not a readable JSON result file ({error})") from None
  if not isinstance(content, dict) or not isinstance(content.get("results"), dict):
    raise UserError(f"{path}: field 'results' is missing; expected a results.json that a "
                    "jaxvna command wrote")
  content["_path"] = str(path)
  return content


def _entry(content: dict, method: str) -> dict:
  results = content["results"]
  if method not in results or "per_subject" not in results[method]:
    known = sorted(m for m, r in results.items() if isinstance(r, dict) and "per_subject" in r)
    raise UserError(f"{content['_path']}: no results of {method!r} (it holds {known})")
  return results[method]


def _evaluated_on(content: dict) -> tuple:
  provenance = content.get("provenance") or {}
  split = ((provenance.get("config") or {}).get("eval") or {}).get("split")
  return (provenance.get("data") or {}).get("fingerprint"), split


def compare(a: dict, b: dict, method_a: str, method_b: str, n_way: str = "10", *,
            replicates: int = 2000, seed: int = 0) -> dict:
  """Paired differences of `method_a` in result file content `a` minus `method_b` in `b`.

  Returns {"a", "b": "<path>:<method>", "n_way", "replicates", "seed", "subjects":
  {name: {task: {"difference", "ci95", "replicates"}}}, "all": {task: the same over all
  subjects (mean over subjects, each subject's images resampled)}}.
  """
  from jaxvna.evaluation import discriminative
  if _evaluated_on(a) != _evaluated_on(b):
    raise UserError(f"{a['_path']} and {b['_path']} were evaluated on different data or "
                    f"splits (data fingerprint, eval.split: {_evaluated_on(a)} vs "
                    f"{_evaluated_on(b)}); a paired comparison needs the same images")
  entry_a, entry_b = _entry(a, method_a), _entry(b, method_b)
  names = list(entry_a["per_subject"])
  missing = [n for n in names if n not in entry_b["per_subject"]]
  if missing:
    raise UserError(f"{b['_path']}: {method_b!r} has no results for subjects {missing}")
  if n_way != "all" and (not str(n_way).isdigit() or int(n_way) < 2):
    raise UserError(f"--n_way: expected an integer >= 2 or 'all', got {n_way!r}")
  kw = dict(replicates=replicates, seed=seed)

  def paired(task, subjects):
    try:
      return discriminative.paired_comparison(entry_a, entry_b, task, n_way,
                                              subjects=subjects, **kw)
    except ValueError as error:
      raise UserError(f"{a['_path']} vs {b['_path']}: {error}") from None
  return {"a": f"{a['_path']}:{method_a}", "b": f"{b['_path']}:{method_b}",
          "n_way": n_way, **kw,
          "subjects": {n: {t: paired(t, [n]) for t in TASKS} for n in names},
          "all": {t: paired(t, names) for t in TASKS}}


def table(out: dict) -> str:
  """Markdown: per subject (and over all of them, when there are several) and task,
  A - B [95% interval], and whether the interval lies above 0, below it, or spans it."""
  verdict = lambda d: ("A above B" if d["ci95"][0] > 0 else "B above A" if d["ci95"][1] < 0
                       else "not settled")
  n = out["n_way"]
  rows = [f"A = {out['a']}", f"B = {out['b']}", "",
          f"| subject | task | A - B, {'N=all' if n == 'all' else f'{n}-way'} top-1 [95% CI "
          "over images] | |", "|---|---|---|---|"]
  overall = [("all", out["all"])] if len(out["subjects"]) > 1 else []
  for name, per_task in [*out["subjects"].items(), *overall]:
    for task in TASKS:
      d = per_task[task]
      rows.append(f"| {name} | {task} | {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, "
                  f"{d['ci95'][1]:+.3f}] | {verdict(d)} |")
  return "\n".join(rows)


def run(path_a, path_b, methods: str, *, n_way: str = "10", out=None) -> dict:
  """`jaxvna compare`: loads both files, compares, prints the table, writes `out`."""
  names = [m.strip() for m in methods.split(",") if m.strip()]
  if len(names) not in (1, 2):
    raise UserError(f"--methods: expected one name or two separated by a comma, got "
                    f"{methods!r}")
  method_a, method_b = names if len(names) == 2 else names * 2
  result = compare(load(path_a), load(path_b), method_a, method_b, n_way)
  print(table(result))
  if out:
    files.write_json(out, result, is_ours=_is_comparison,
                     what="a comparison that jaxvna compare wrote")
  return result


def _is_comparison(path: pathlib.Path) -> bool:
  """Whether `path` holds a comparison this command wrote (only those are replaced)."""
  try:
    content = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return False
  return isinstance(content, dict) and {"a", "b", "n_way", "subjects", "all"} <= content.keys()
