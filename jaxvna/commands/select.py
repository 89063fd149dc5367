"""Settings chosen on the validation split; the test split scored once, at the end.

`run(config, workdir)` (the `jaxvna select` command) trains `config.method` once for every
combination of the values in `config.select.grid` (a block that mirrors the config:
`grid.optim.weight_decay = (1e-4, 1e-2, 1e-1)` tries three weight decays; several keys
give their product), each in `workdir/candidates/<i>`, scored on the **validation** split
(`eval.split = "validation"`, written there as results.json). The candidate with the best
validation score is then evaluated on `config.eval.split` (the test split) with the run's
own evaluation, null controls included when `eval.null_control` is on, into
`workdir/results.json`, which also holds the selection: the grid, every candidate's
settings and validation score (the validation curve), and the choice. The test split is
read for nothing else, so the choice cannot have seen it.

Score: `select.score` of the N-way top-1 on validation (N = `select.n_way`, trial-averaged
responses, mean over subjects): "mean" of decoding and encoding, or one of them. Ties go
to the earlier candidate (the grid's order).

Anything a config sets can be a grid key: the optimiser (`optim.weight_decay`,
`optim.lr`), the loss (`model.init_temperature`), the length of training (`train.steps`:
early stopping as a choice among lengths), the image front end
(`model.image_tower.front_end`) or a backbone tower's `model.image_tower.layer`. The
Gabor-energy ridge reference chooses its own penalty by leave-one-out on the training
images, so it needs no grid.

Finished candidates are reused (each run resumes from its checkpoint); the scores and the
choice are recomputed.
"""

from __future__ import annotations

import itertools
import pathlib
import time

from jaxvna import errors, files

SCORES = ("mean", "decoding", "encoding")


def grid_points(grid) -> list[dict]:
  """The grid block as a list of {dotted key: value}, one per combination (keys sorted,
  the last key varying fastest). A scalar value is a grid of one."""
  flat = {}

  def walk(block, prefix):
    for key, value in block.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        flat[prefix + key] = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  walk(grid, "")
  keys = sorted(flat)
  return [dict(zip(keys, values)) for values in itertools.product(*(flat[k] for k in keys))]


def candidate_config(config, settings: dict, split: str):
  """`config` with `settings` applied, evaluated on `split`, without the select block and
  the null controls (a candidate is only scored)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    del c["select"]
    for key, value in settings.items():
      node, *path = key.split(".")
      parent = c
      for part in [node, *path][:-1]:
        if part not in parent:
          raise errors.ConfigError(f"select.grid.{key}: the config has no field {key!r}")
        parent = parent[part]
      leaf = key.split(".")[-1]
      if leaf not in parent:
        raise errors.ConfigError(f"select.grid.{key}: the config has no field {key!r}")
      try:
        parent[leaf] = value
      except TypeError as e:  # ConfigDict keeps a field's type
        raise errors.ConfigError(f"select.grid.{key}: {value!r} cannot be set there ({e})") from e
    c.eval.split = split
    c.eval.null_control = False
  return c


def score(results: dict, method: str, n_way, how: str) -> float:
  """The validation score of one candidate's results (`results.json`'s "results")."""
  tasks = ("decoding", "encoding") if how == "mean" else (how,)
  report = results[method]
  return sum(report[t][str(n_way)]["top1"] for t in tasks) / len(tasks)


def _check(config) -> list[dict]:
  s = config.select
  if s.score not in SCORES:
    raise errors.ConfigError(f"select.score: unknown {s.score!r}; expected one of {SCORES}")
  if s.n_way not in tuple(config.eval.n_ways):
    raise errors.ConfigError(f"select.n_way: {s.n_way!r} is not one of eval.n_ways "
                             f"{tuple(config.eval.n_ways)}")
  if config.eval.split == "validation":
    raise errors.ConfigError("eval.split: 'validation' is what select chooses on; the final "
                             "evaluation needs another split (test)")
  points = grid_points(s.grid)
  if len(points) < 2:
    raise errors.ConfigError("select.grid: nothing to choose from; give at least one field "
                             "two values (e.g. --config.select.grid.optim.weight_decay="
                             "'(1e-4,1e-2)')")
  for settings in points:  # a key the config lacks fails before anything trains
    candidate_config(config, settings, "validation")
  return points


def run(config, workdir, *, force: bool = False) -> dict:
  """`jaxvna select`: trains and scores every candidate, evaluates the chosen one on the
  test split; returns the content of workdir/results.json."""
  from jaxvna.training import train  # noqa: PLC0415
  started = time.time()
  points = _check(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = train.load_dataset(config)
  s = config.select
  candidates = []
  for i, settings in enumerate(points):
    out = train.train_and_evaluate(candidate_config(config, settings, "validation"),
                                   workdir / "candidates" / str(i), dataset=dataset,
                                   force=force)
    candidates.append({"candidate": i, "settings": settings,
                       "validation_score": score(out["results"], config.method, s.n_way,
                                                 s.score)})
    print(f"candidate {i} {settings}: validation {s.score} {s.n_way}-way top-1 "
          f"{candidates[-1]['validation_score']:.3f}")
  best = max(candidates, key=lambda c: c["validation_score"])  # the first of ties
  chosen_dir = workdir / "candidates" / str(best["candidate"])
  final = candidate_config(config, best["settings"], config.eval.split)
  with final.unlocked():
    final.eval.null_control = config.eval.get("null_control")
  trained_on = train.training_dataset(final, dataset)
  model = train.make_model(final, trained_on)
  step, state = train.restore_latest(final, model, trained_on, chosen_dir)
  nulls = None
  if train.null_control_on(final, default=False):
    nulls = train.run_null_controls(final, dataset, chosen_dir, force=force)
  out = train.evaluate_and_write(final, model, state.params, dataset, workdir, step=step,
                                 started=started, null_controls=nulls)
  out["selection"] = {
      "score": f"validation {s.score} of decoding and encoding {s.n_way}-way top-1"
               if s.score == "mean" else f"validation {s.score} {s.n_way}-way top-1",
      "grid": sorted({k for p in points for k in p}), "candidates": candidates,
      "chosen": best, "evaluated_on": config.eval.split,
  }
  out["provenance"]["config"]["select"] = config.select.to_dict()
  files.write_json(workdir / "results.json", out)
  print(summary_table(out))
  return out


def summary_table(out: dict) -> str:
  """The validation curve and the choice, as a markdown table."""
  sel = out["selection"]
  keys = sel["grid"]
  lines = [f"| candidate | {' | '.join(f'`{k}`' for k in keys)} | {sel['score']} |",
           "|---|" + "---|" * len(keys) + "---|"]
  for c in sel["candidates"]:
    mark = " (chosen)" if c["candidate"] == sel["chosen"]["candidate"] else ""
    values = " | ".join(f"{c['settings'][k]:g}" if isinstance(c["settings"][k], float)
                        else str(c["settings"][k]) for k in keys)
    lines.append(f"| {c['candidate']}{mark} | {values} | {c['validation_score']:.3f} |")
  return "\n".join(lines)
