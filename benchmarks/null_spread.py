"""How far a null control scatters from one shuffle of the training pairs to the next,
against the analytic band that `discriminative.chance_check` puts around chance.

  python benchmarks/null_spread.py --config=configs/vna_sim.py:direct_encoding \
      --seeds=8 --workdir=W --results=results/null_spread_direct_encoding_sim.json

Trains only the null controls of the config's method (`train.run_null_controls`; those
named by --controls, e.g. --controls=null_control for miVAE's pairs alone), once per seed
0..seeds-1 (seed k: its own permutation of the training pairs and its own
initialisation; seed 0 is the control a plain run with that config makes), each in
W/seed_<k>, evaluates each on the same held-out images, and writes W/null_spread.json
(copied to --results) with every seed's chance check and, per control, task and N:
every seed's top-1, their mean and standard deviation, the analytic band's standard
deviation and the ratio of the two, how many seeds fall outside the analytic band, and
whether the mean over seeds is at chance: inside chance +- t * sd / sqrt(seeds), t the
99.5% quantile of Student's t with seeds - 1 degrees of freedom (a 99% interval, as the
analytic check), which covers the draw of the null model as the analytic band cannot.

The analytic band takes one trained model's rankings as fixed and its queries as
independent; a null model is itself a draw (of the shuffle and of the initialisation),
whose accidental alignment with the true tuning moves every query together. A ratio near
1 says the band is calibrated; above 1, a single control leaves it more often than 1%.
The table (`spread_table`) is what the README shows.
"""

import pathlib
import shutil
import sys
import time

from absl import app, flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "vna_sim.py"),
                                "Run config (its method's null controls are trained).",
                                lock_config=True)
flags.DEFINE_integer("seeds", 8, "Null trainings: seeds 0..seeds-1.")
flags.DEFINE_string("workdir", "workdir_null_spread", "Output folder.")
flags.DEFINE_string("results", None, "Copy W/null_spread.json here.")
flags.DEFINE_list("controls", None, "Train only these null controls (e.g. null_control); "
                  "default: every control of the method.")
FLAGS = flags.FLAGS


def spread(checks: list[dict]) -> dict:
  """Across seeds, from one control's `chance_check` per seed:
  {task: {N: {"top1": [per seed], "chance", "mean", "sd", "analytic_sd", "ratio",
  "outside_band", "mean_band", "mean_at_chance"}}}; sd is the sample standard deviation
  (ddof 1), analytic_sd that of the first seed's band (every seed has the same queries,
  so the same band), mean_band chance +- t * sd / sqrt(seeds) (module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from jaxvna.evaluation import discriminative  # pylint: disable=g-import-not-at-top
  t = float(stats.t.ppf(0.995, len(checks) - 1))
  out = {}
  for task in ("decoding", "encoding"):
    out[task] = {}
    for n_way, first in checks[0][task].items():
      top1 = [c[task][n_way]["top1"] for c in checks]
      sd = float(np.std(top1, ddof=1))
      analytic_sd = (first["band"][1] - first["band"][0]) / (2 * discriminative.CHANCE_Z)
      chance, mean = first["chance"], float(np.mean(top1))
      half = t * sd / len(top1) ** 0.5
      out[task][n_way] = dict(
          top1=top1, chance=chance, mean=mean, sd=sd, analytic_sd=analytic_sd,
          ratio=sd / analytic_sd,
          outside_band=sum(not c[task][n_way]["at_chance"] for c in checks),
          mean_band=[chance - half, chance + half],
          mean_at_chance=chance - half <= mean <= chance + half)
  return out


def spread_table(result: dict) -> str:
  """Markdown: one row per control, task and N of a null_spread.json."""
  rows = ["| control | task | N | chance | mean over seeds [99% band] | sd over seeds "
          "| analytic sd | ratio | seeds outside the analytic band |",
          "|---|---|---|---|---|---|---|---|---|"]
  seeds = len(result["seeds"])
  for control, per_task in result["spread"].items():
    for task, per_n in per_task.items():
      for n_way, s in per_n.items():
        mean = (f"{s['mean']:.3f} [{s['mean_band'][0]:.3f}, {s['mean_band'][1]:.3f}]"
                + ("" if s["mean_at_chance"] else " off"))
        rows.append(f"| {control} | {task} | {n_way} | {s['chance']:.3f} | {mean} "
                    f"| {s['sd']:.4f} | {s['analytic_sd']:.4f} | {s['ratio']:.2f} "
                    f"| {s['outside_band']} of {seeds} |")
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.seeds < 2:
    raise app.UsageError("--seeds must be at least 2 (a spread needs two draws)")
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from jaxvna import errors, files  # pylint: disable=g-import-not-at-top
  from jaxvna.training import provenance, train  # pylint: disable=g-import-not-at-top
  started = time.time()
  config = FLAGS.config
  try:
    train.null_controls(config, FLAGS.controls)
  except errors.UserError as e:
    raise app.UsageError(f"--controls: {e}") from None
  workdir = pathlib.Path(FLAGS.workdir)
  dataset = train.load_dataset(config)
  checks = {}
  for seed in range(FLAGS.seeds):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    nulls = train.run_null_controls(seeded, dataset, workdir / f"seed_{seed}",
                                    only=FLAGS.controls)
    for control, per_name in nulls.items():
      checks.setdefault(control, []).append(per_name[config.method]["chance_check"])
    print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
  result = {"dataset": dataset.name, "method": config.method,
            "seeds": list(range(FLAGS.seeds)),
            "checks": checks,
            "spread": {control: spread(c) for control, c in checks.items()},
            "provenance": provenance.record(config, dataset, started=started)}
  files.write_json(workdir / "null_spread.json", result)
  print(spread_table(result))
  if FLAGS.results:
    shutil.copyfile(workdir / "null_spread.json", FLAGS.results)


if __name__ == "__main__":
  sys.exit(app.run(main))
