"""Where miVAE's shuffled-pairs signal came from: its controls scored on raw and on centred
posterior means, with the geometry that ties weak images to weak responses.

  python benchmarks/null_spread.py --config=configs/mivae_sim.py --controls=null_control \
      --seeds=12 --workdir=W                                # trains the controls
  python benchmarks/mivae_null_source.py --config=configs/mivae_sim.py --seeds=12 \
      --workdir=W --results=results/mivae_null_source_sim.json

Restores the pairs control (pairs shuffled within subject) of every seed in W/seed_<k>,
embeds each subject's held-out images and trial-averaged responses, and reports per seed
and subject:
  raw, centred        2- and 10-way top-1 of decoding and encoding, scored on the raw
                      posterior means and on each set centred on its own mean (what
                      `mivae.evaluation.subject_representations` now gives);
  cos_means           cosine between the mean image and the mean response embedding;
  alignment_contrast  correlation, over images, of each image embedding's cosine with the
                      images' mean embedding against the image's RMS contrast;
  alignment_drive     the same for responses against their drive (mean log1p response);
  alignment_pairs     correlation of the two alignments over true image-response pairs.
Then, per quantity, the mean over seeds (of the mean over subjects) with a 99% t interval
over seeds, as `benchmarks/null_spread.py` does. Written to W/mivae_null_source.json and
copied to --results; `source_table` is the README's table.
"""

import pathlib
import shutil
import sys
import time

from absl import app, flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS


def define_flags():
  """The command's flags; defined when run, so that tests can import the functions beside
  other benchmarks that define a --config of their own."""
  config_flags.DEFINE_config_file("config", str(REPO / "configs" / "mivae_sim.py"),
                                  "The config the controls were trained with.",
                                  lock_config=True)
  flags.DEFINE_integer("seeds", 12, "Controls of seeds 0..seeds-1 (W/seed_<k>/null_control).")
  flags.DEFINE_string("workdir", "workdir_null_spread_mivae", "benchmarks/null_spread.py's W.")
  flags.DEFINE_string("results", None, "Copy W/mivae_null_source.json here.")

SCORES = [(scoring, task, n_way) for scoring in ("raw", "centred")
          for task in ("decoding", "encoding") for n_way in ("2", "10")]
GEOMETRY = ("cos_means", "alignment_contrast", "alignment_drive", "alignment_pairs")


def geometry(image_repr, response_repr, images, mean_responses) -> dict:
  """The GEOMETRY quantities of one subject's raw embeddings (module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxvna.evaluation import identification  # pylint: disable=g-import-not-at-top
  unit = identification.unit_rows
  image_mean, response_mean = (unit(r.mean(axis=0, keepdims=True))[0]
                               for r in (image_repr, response_repr))
  image_alignment = unit(image_repr) @ image_mean
  response_alignment = unit(response_repr) @ response_mean
  grey = np.asarray(images, np.float32)
  grey = grey.mean(axis=-1) if grey.ndim == 4 else grey
  contrast = grey.reshape(len(grey), -1).std(axis=1)
  drive = np.log1p(np.maximum(np.nan_to_num(mean_responses), 0.0)).mean(axis=1)
  corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])
  return dict(cos_means=float(image_mean @ response_mean),
              alignment_contrast=corr(image_alignment, contrast),
              alignment_drive=corr(response_alignment, drive),
              alignment_pairs=corr(image_alignment, response_alignment))


def seed_rows(config, dataset, control_dir) -> dict:
  """{subject: {"raw"/"centred": {task: {N: top1}}, GEOMETRY...}} of one trained control."""
  from jaxvna.evaluation import discriminative  # pylint: disable=g-import-not-at-top
  from jaxvna.methods.mivae import evaluation  # pylint: disable=g-import-not-at-top
  from jaxvna.training import train  # pylint: disable=g-import-not-at-top
  control = train.null_controls(config, ["null_control"])[0]
  control_config, data = control.change(config), control.data(config, dataset)
  trained_on = train.training_dataset(control_config, data)
  model = train.make_model(control_config, trained_on)
  params = train.restore_latest(control_config, model, trained_on, control_dir)[1].params
  train_ds, _ = evaluation.split_subjects(control_config, data)
  table = evaluation.neuron_table(control_config, data, [r.name for r in train_ds.recordings])
  enc = evaluation.Encoders(model, params, table,
                            evaluation.axis_rotation(control_config, params, train_ds))
  split = control_config.eval.split
  out = {}
  for s, rec in enumerate(data.recordings):
    raw = evaluation.subject_representations(enc, rec, s, split, centred=False)
    held_out = rec.subset(rec.indices(split))
    row = geometry(raw["image_repr"], raw["mean_repr"], held_out.images,
                   held_out.mean_responses)
    for scoring, reprs in (("raw", raw), ("centred", evaluation.centred_sets(raw))):
      scores = discriminative.score_representations(reprs, control_config.eval)
      row[scoring] = {task: {n: scores[task][n]["top1"] for n in ("2", "10")}
                      for task in ("decoding", "encoding")}
    out[rec.name] = row
  return out


def summary(per_seed: list[dict]) -> dict:
  """{quantity: {"mean", "interval"}}: over seeds, the mean over subjects, with a 99% t
  interval over seeds; quantities "raw/decoding/2" ... and GEOMETRY."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top
  t = float(stats.t.ppf(0.995, len(per_seed) - 1))
  values = {}
  for seed in per_seed:
    subjects = list(seed.values())
    for scoring, task, n_way in SCORES:
      values.setdefault(f"{scoring}/{task}/{n_way}", []).append(
          np.mean([s[scoring][task][n_way] for s in subjects]))
    for name in GEOMETRY:
      values.setdefault(name, []).append(np.mean([s[name] for s in subjects]))
  out = {}
  for name, v in values.items():
    mean, half = float(np.mean(v)), t * float(np.std(v, ddof=1)) / len(v) ** 0.5
    out[name] = {"mean": mean, "interval": [mean - half, mean + half]}
  return out


def source_table(result: dict) -> str:
  """Markdown: raw against centred top-1, and the geometry, over the file's seeds."""
  s, seeds = result["summary"], len(result["seeds"])
  cell = lambda q: f"{s[q]['mean']:.3f} [{s[q]['interval'][0]:.3f}, {s[q]['interval'][1]:.3f}]"
  rows = [f"| task | N | chance | raw, mean of {seeds} seeds [99% interval] | centred |",
          "|---|---|---|---|---|"]
  for task in ("decoding", "encoding"):
    for n_way in ("2", "10"):
      rows.append(f"| {task} | {n_way} | {1 / int(n_way):.3f} | {cell(f'raw/{task}/{n_way}')} "
                  f"| {cell(f'centred/{task}/{n_way}')} |")
  rows += ["", "| raw embeddings | mean of seeds [99% interval] |", "|---|---|"]
  rows += [f"| {name} | {cell(name)} |" for name in GEOMETRY]
  return "\n".join(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.seeds < 2:
    raise app.UsageError("--seeds must be at least 2 (an interval needs two draws)")
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  from jaxvna import files  # pylint: disable=g-import-not-at-top
  from jaxvna.training import provenance, train  # pylint: disable=g-import-not-at-top
  started = time.time()
  config = FLAGS.config
  if config.method != "mivae":
    raise app.UsageError(f"--config: method {config.method!r}; this diagnosis is miVAE's")
  workdir = pathlib.Path(FLAGS.workdir)
  missing = [k for k in range(FLAGS.seeds)
             if not (workdir / f"seed_{k}" / "null_control" / "checkpoints").is_dir()]
  if missing:
    raise app.UsageError(f"{workdir}: no trained pairs control for seeds {missing} (expected "
                         "seed_<k>/null_control/checkpoints; train them with "
                         "benchmarks/null_spread.py --controls=null_control)")
  dataset = train.load_dataset(config)
  per_seed = []
  for seed in range(FLAGS.seeds):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    per_seed.append(seed_rows(seeded, dataset, workdir / f"seed_{seed}" / "null_control"))
    print(f"seed {seed} done ({time.time() - started:.0f} s)", flush=True)
  result = {"dataset": dataset.name, "seeds": list(range(FLAGS.seeds)),
            "per_seed": per_seed, "summary": summary(per_seed),
            "provenance": provenance.record(config, dataset, started=started)}
  files.write_json(workdir / "mivae_null_source.json", result)
  print(source_table(result))
  if FLAGS.results:
    shutil.copyfile(workdir / "mivae_null_source.json", FLAGS.results)


if __name__ == "__main__":
  define_flags()
  sys.exit(app.run(main))
