"""Settings chosen on the validation split; the test split scored once, at the end.

`run(config, workdir)` (the `jaxvna select` command) trains `config.method` once for every
combination of the values in `config.select.grid` (a block that mirrors the config:
`grid.optim.weight_decay = (1e-4, 1e-2, 1e-1)` tries three weight decays; several keys
give their product), each in `workdir/candidates/<i>`, scored on the **validation** split
(`eval.split = "validation"`). The candidate with the best
validation score is then evaluated on `config.eval.split` (the test split) with the run's
own evaluation, null controls included when `eval.null_control` is on, into
`workdir/results.json`, which also holds the selection: the grid, every candidate's
settings and validation score (the validation curve), and the choice. The test split is
read for nothing else, so the choice cannot have seen it.

Ensembles: with `select.seeds` = (0, 1, 2) every candidate is trained once per seed
(`workdir/candidates/<i>/seed<k>`) and scored as the ensemble of its seeds
(`discriminative.ensemble_represent`: the mean of the members' cosines for embedding
models, the mean prediction for the direct baselines); results.json then holds the first
seed's model under the method's name and the ensemble under "<method>_ensemble". The
default, (), trains `config.seed` alone. A grid of one setting with several seeds is an
ensemble of that setting, nothing chosen. Each candidate's validation results are in
`workdir/candidates/<i>/validation.json`.

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
from jaxvna.commands import demo

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
  """`config` with `settings` ({dotted key: value}; "seed" included) applied, evaluated on
  `split`, without the select block and the null controls (a candidate is only scored)."""
  c = config.copy_and_resolve_references()
  was_locked = c.is_locked
  with c.unlocked():
    del c["select"]
  c.lock()  # a grid key the config lacks is refused, not added
  for key, value in settings.items():  # one at a time, to name the one that fails
    try:
      c.update_from_flattened_dict({key: value})
    except KeyError as e:
      raise errors.ConfigError(f"select.grid.{key}: the config has no field {key!r}") from e
    except TypeError as e:  # ConfigDict keeps a field's type
      raise errors.ConfigError(f"select.grid.{key}: {value!r} cannot be set there ({e})") from e
  c.eval.split = split
  c.eval.null_control = False
  if not was_locked:
    c.unlock()
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
  if len(points) < 2 and len(tuple(s.seeds)) < 2:
    raise errors.ConfigError("select.grid: nothing to choose from and no ensemble; give at "
                             "least one field two values (e.g. --config.select.grid.optim."
                             "weight_decay='(1e-4,1e-2)') or several select.seeds")
  for settings in points:  # a key the config lacks fails before anything trains
    candidate_config(config, settings, "validation")
  return points


def _ensemble_results(config, members, dataset) -> dict:
  """Results of the members' ensemble (`discriminative.ensemble_represent`) on
  config.eval.split."""
  from jaxvna import registry  # noqa: PLC0415
  from jaxvna.evaluation import discriminative  # noqa: PLC0415
  method = registry.get(config.method)
  ensemble = discriminative.ensemble_represent(
      [method.represent(config, model, params) for model, params in members])
  return discriminative.evaluate_model(config, dataset, ensemble)


def _validation_results(config, members, dataset) -> dict:
  """{method: results} of one candidate on the validation split: the model's own
  evaluation, or with several seeds the ensemble's."""
  from jaxvna.training import train  # noqa: PLC0415
  if len(members) == 1:
    (model, params), = members
    return train.evaluate(config, model, params, dataset, None)
  return {config.method: _ensemble_results(config, members, dataset)}


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
  seeds = tuple(s.seeds) or (config.seed,)
  candidates, best_members = [], None
  for i, settings in enumerate(points):
    members = []
    for seed in seeds:
      member = candidate_config(config, {**settings, "seed": seed}, "validation")
      model, params, _ = train.train(member, workdir / "candidates" / str(i) / f"seed{seed}",
                                     dataset=train.training_dataset(member, dataset),
                                     force=force)
      members.append((model, train.local_copy(params)))
    val_config = candidate_config(config, {**settings, "seed": seeds[0]}, "validation")
    results = _validation_results(val_config, members, dataset)
    candidates.append({"candidate": i, "settings": settings,
                       "validation_score": score(results, config.method, s.n_way, s.score)})
    files.write_json(workdir / "candidates" / str(i) / "validation.json",
                     {**candidates[-1], "seeds": list(seeds), "results": results})
    if best_members is None or candidates[-1]["validation_score"] > max(
        c["validation_score"] for c in candidates[:-1]):
      best_members = members  # only the leader's parameters stay in memory
    print(f"candidate {i} {settings}: validation {s.score} {s.n_way}-way top-1 "
          f"{candidates[-1]['validation_score']:.3f}")
  best = max(candidates, key=lambda c: c["validation_score"])  # the first of ties
  members = best_members
  final = candidate_config(config, {**best["settings"], "seed": seeds[0]}, config.eval.split)
  with final.unlocked():
    final.eval.null_control = config.eval.get("null_control")
  first_dir = workdir / "candidates" / str(best["candidate"]) / f"seed{seeds[0]}"
  nulls = None
  if train.null_control_on(final, default=False):
    nulls = train.run_null_controls(final, dataset, first_dir, force=force)
  model, params = members[0]
  out = train.evaluate_and_write(final, model, params, dataset, workdir,
                                 step=final.train.steps, started=started, null_controls=nulls)
  if len(members) > 1:
    out["results"][f"{config.method}_ensemble"] = _ensemble_results(final, members, dataset)
  out["selection"] = {
      "score": f"validation {s.score} of decoding and encoding {s.n_way}-way top-1"
               if s.score == "mean" else f"validation {s.score} {s.n_way}-way top-1",
      "grid": sorted({k for p in points for k in p}), "seeds": list(seeds),
      "candidates": candidates, "chosen": best, "evaluated_on": config.eval.split,
  }
  out["provenance"]["config"]["select"] = config.select.to_dict()
  files.write_json(workdir / "results.json", out)
  print(summary_table(out))
  print(f"\n{config.eval.split} split:\n" + demo.results_table(out["results"]))
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
