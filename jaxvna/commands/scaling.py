"""Scaling with data: how the held-out error of a method falls with its training set.

`run(config, workdir)` (the `jaxvna scaling` command) trains `config.method` once per
entry of `config.scaling.fractions` (and of `config.scaling.widths`), each on a nested
fraction of every subject's training images (`data.train_fraction`; a smaller fraction's
images are a subset of a larger one's), with the same number of optimisation steps
(`train.steps`) for every run, in `workdir/<fraction>` (`workdir/<fraction>_w<width>` for
a width other than 1). A finished run is reused; an interrupted one resumes from its
checkpoint.

Error. Each run is scored on the held-out images (`eval.split`) with trial-averaged
responses: the N-way top-1 accuracy (N = `scaling.n_way`, 10) of decoding and of encoding,
averaged over subjects. The headline error of a run is

    error = 1 - (decoding top-1 + encoding top-1) / 2,

one number that weighs both questions equally. Accuracies here are the exact expectation
over candidate draws of each query's top-1 success (`identification.expected_top1`), so they carry no
draw noise; results.json in each run folder holds the usual drawn report.

Fit. error(n) = a * n**exponent + c by least squares (`scipy.optimize.curve_fit`, bounds
a >= 0, -4 <= exponent <= 4, 0 <= c <= 1), n = the number of training images (records:
(subject, image) pairs of the training split in the run's fraction), one fit per width.

Confidence intervals. The bootstrap resamples the held-out images: each of
`scaling.bootstrap` replicates draws, per subject, the held-out images with replacement
(the same draw for decoding and encoding and for every run, since all runs share the
test set), recomputes every run's error from its per-query successes and refits the
curve. The 95% intervals are the 2.5 and 97.5 percentiles over replicates. They cover the
sampling of the test images, not the variability of training (subset choice, seed).

Outputs in `workdir`: scaling.csv (one row per run), scaling.png (error vs n on log-log
axes with each fit and its 95% band) and scaling.json (the fit of the first width at the
top level: `exponent`, `exponent_ci95`, `a`, `c`, `curve`; every width's fit under
`fits`; the runs under `runs`).
"""

from __future__ import annotations

import csv
import json
import pathlib
import time
import warnings

import numpy as np
from scipy import optimize

from jaxvna import errors, files, registry
from jaxvna.data import Dataset, pipeline

TASKS = ("decoding", "encoding")
# (lower, upper) bounds of (a, exponent, c).
FIT_BOUNDS = ((0.0, -4.0, 0.0), (np.inf, 4.0, 1.0))
# Model config fields that a width multiplies: every hidden width of both towers; the
# shared embedding width stays, so every run compares embeddings of one size.
WIDTH_FIELDS = (("image_tower", "channels"), ("image_tower", "hidden"),
                ("neural_tower", "readin_dim"), ("neural_tower", "hidden"))
RUN_FILE = "scaling_run.json"


# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------

def run_name(fraction: float, width: float) -> str:
  """The run's folder name: "<fraction>", or "<fraction>_w<width>" for width != 1."""
  return f"{fraction:g}" if width == 1 else f"{fraction:g}_w{width:g}"


def scale_widths(model_config, width: float):
  """A copy of a model config with every hidden width (`WIDTH_FIELDS`) times `width`."""
  scaled = model_config.copy_and_resolve_references()
  for tower, field in WIDTH_FIELDS:
    if tower in scaled and field in scaled[tower]:
      value = scaled[tower][field]
      scaled[tower][field] = (max(1, round(value * width)) if np.ndim(value) == 0
                              else tuple(max(1, round(v * width)) for v in value))
  return scaled


def run_config(config, fraction: float, width: float):
  """The config of one run: `config` at one training fraction and width, less `scaling`
  (so that adding fractions later does not make finished runs look foreign)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    del c["scaling"]
    c.data.train_fraction = float(fraction)
    c.model = scale_widths(c.model, width)
  return c


def num_training_images(config, dataset: Dataset) -> int:
  """Training records (subject, image pairs) a run of `config` draws from."""
  return len(pipeline.DatasetSource(dataset, "train", fraction=config.data.train_fraction,
                                    subset_seed=config.seed))


def query_successes(config, model, params, dataset: Dataset, n_way) -> dict:
  """{subject name: {task: (Q,) expected top-1 success}} on trial-averaged held-out
  responses; query q of both tasks is held-out image q of the subject."""
  from jaxvna.evaluation import discriminative, identification
  k_max = max(dataset.neuron_counts)
  represent = registry.get(config.method).represent(config, model, params)
  out = {}
  for s, rec in enumerate(dataset.recordings):
    reprs = discriminative.representations(config, rec, s, k_max, represent)
    out[rec.name] = {}
    for task in TASKS:
      similarity, targets, _ = identification.discriminative_similarity(
          reprs["mean_repr"], reprs["image_repr"], task=task, metric=reprs["metric"])
      out[rec.name][task] = identification.expected_top1(similarity, targets, n_way)
  return out


def train_run(config, workdir: pathlib.Path, dataset: Dataset, *, n_way, width: float,
              force: bool = False) -> dict:
  """Trains (or resumes) and scores one run; reuses a finished run of the same config.

  Writes workdir/results.json (as `jaxvna train`) and workdir/scaling_run.json (the row
  and the per-query successes), which marks the run finished.

  Returns:
    the run: {"name", "fraction", "width", "n_train", "decoding_top1", "encoding_top1",
    "error", "per_query": {subject: {task: list of Q successes}}}.
  """
  from jaxvna.training import train
  stored_config = json.loads(config.to_json())
  marker = workdir / RUN_FILE
  if marker.exists() and not force:
    stored = json.loads(marker.read_text())
    if stored["config"] == stored_config and stored["n_way"] == n_way:
      return stored["run"]
  trained_on = train.training_dataset(config, dataset)
  model, params, _ = train.train(config, workdir, dataset=trained_on, force=force)
  train.evaluate_and_write(config, model, params, dataset, workdir)
  successes = query_successes(config, model, params, dataset, n_way)
  accuracy = {task: float(np.mean([s[task].mean() for s in successes.values()]))
              for task in TASKS}
  run = {"name": workdir.name, "fraction": config.data.train_fraction, "width": width,
         "n_train": num_training_images(config, trained_on),
         "decoding_top1": accuracy["decoding"], "encoding_top1": accuracy["encoding"],
         "error": 1.0 - float(np.mean(list(accuracy.values()))),
         "per_query": {name: {task: s[task].tolist() for task in TASKS}
                       for name, s in successes.items()}}
  files.write_json(marker, {"config": stored_config, "n_way": n_way, "run": run})
  return run


# ----------------------------------------------------------------------------
# Fit and bootstrap
# ----------------------------------------------------------------------------

def power_law(n, a, exponent, c):
  """a * n**exponent + c."""
  return a * np.power(n, exponent) + c


def fit_power_law(n, error) -> dict:
  """Least-squares fit of error(n) = a * n**exponent + c within `FIT_BOUNDS`.

  The fit runs on n / max(n), which keeps `a` of order one whatever the data size; the
  returned `a` is for n itself.

  Args:
    n: (P,) positive data sizes, P >= 3.
    error: (P,) errors in [0, 1].

  Returns:
    {"a", "exponent", "c"} floats.
  """
  n = np.asarray(n, np.float64)
  error = np.asarray(error, np.float64)
  if n.shape != error.shape or n.ndim != 1 or len(n) < 3:
    raise ValueError(f"fit_power_law: expected at least 3 (n, error) pairs of one shape, "
                     f"got {n.shape} and {error.shape}")
  scale = n.max()
  x = n / scale
  c0 = 0.5 * error.min()
  p0 = (max(error[np.argmax(x)] - c0, 1e-3), -0.5, c0)
  with warnings.catch_warnings():
    # Three points leave no residual to estimate the covariance from; we do not use it.
    warnings.simplefilter("ignore", optimize.OptimizeWarning)
    (a, exponent, c), _ = optimize.curve_fit(power_law, x, error, p0=p0, bounds=FIT_BOUNDS,
                                             maxfev=20000)
  return {"a": float(a * scale ** -exponent), "exponent": float(exponent), "c": float(c)}


def bootstrap_errors(runs: list[dict], replicates: int, seed: int) -> np.ndarray:
  """(replicates, len(runs)) errors, the held-out images of each subject resampled with
  replacement (one draw per replicate shared by both tasks and every run)."""
  from jaxvna.evaluation import identification
  # {subject: (runs, Q)}: each query's success averaged over the two tasks.
  success = {subject: np.array([np.mean([run["per_query"][subject][t] for t in TASKS], axis=0)
                                for run in runs])
             for subject in runs[0]["per_query"]}
  accuracy = identification.bootstrap_query_means(success, replicates,
                                                  np.random.default_rng(seed))
  return 1.0 - accuracy


def fit_with_bootstrap(n, error, boot_errors, *, curve_points: int = 50) -> dict:
  """The fit of (n, error), and 95% percentile intervals over the refits of each
  bootstrap row of `boot_errors` (replicates, P).

  Returns:
    {"exponent", "exponent_ci95", "a", "a_ci95", "c", "c_ci95",
     "bootstrap": {"replicates", "failed_fits"},
     "curve": {"n", "error", "error_ci95": [low, high]} on `curve_points` log-spaced n}.
  """
  fit = fit_power_law(n, error)
  refits = []
  for row in boot_errors:
    try:
      refits.append(fit_power_law(n, row))
    except RuntimeError:  # curve_fit ran out of evaluations
      continue
  params = {k: np.array([r[k] for r in refits]) for k in ("a", "exponent", "c")}
  grid = np.geomspace(min(n), max(n), curve_points)
  band = np.array([power_law(grid, r["a"], r["exponent"], r["c"]) for r in refits])
  out = dict(fit)
  for k, values in params.items():
    out[f"{k}_ci95"] = np.percentile(values, [2.5, 97.5]).tolist()
  out["bootstrap"] = {"replicates": len(boot_errors),
                      "failed_fits": len(boot_errors) - len(refits)}
  out["curve"] = {"n": grid.tolist(),
                  "error": power_law(grid, fit["a"], fit["exponent"], fit["c"]).tolist(),
                  "error_ci95": np.percentile(band, [2.5, 97.5], axis=0).tolist()}
  return out


# ----------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------

def _check(config):
  s = config.scaling
  if registry.get(config.method).represent is None:
    supported = [m for m in registry.PACKAGES if registry.get(m).represent is not None]
    raise errors.ConfigError(f"config.method: scaling supports {supported} (methods scored "
                             f"by discriminative identification), got {config.method!r}")
  fractions = tuple(float(f) for f in s.fractions)
  if len(set(fractions)) < 3 or not all(0 < f <= 1 for f in fractions):
    raise errors.ConfigError(f"scaling.fractions: need at least 3 distinct fractions in (0, 1] to "
                     f"fit a * n**exponent + c, got {fractions}")
  widths = tuple(float(w) for w in s.widths)
  if not widths or min(widths) <= 0:
    raise errors.ConfigError(f"scaling.widths: expected positive multipliers, got {widths}")
  if s.bootstrap < 200:
    raise errors.ConfigError(f"scaling.bootstrap: expected at least 200 replicates, got {s.bootstrap}")
  return sorted(set(fractions)), widths


def run(config, workdir, *, force: bool = False) -> dict:
  """`jaxvna scaling`: trains every fraction (and width), fits, writes the three files.

  Returns:
    the content of workdir/scaling.json.
  """
  from jaxvna.training import provenance, summaries, train
  started = time.time()
  fractions, widths = _check(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = train.load_dataset(config)
  n_way = config.scaling.n_way
  runs = [train_run(run_config(config, f, w), workdir / run_name(f, w), dataset, n_way=n_way,
                    width=w, force=force)
          for w in widths for f in fractions]
  boot = bootstrap_errors(runs, config.scaling.bootstrap, config.scaling.bootstrap_seed)
  fits = {}
  for w in widths:
    cols = [i for i, r in enumerate(runs) if r["width"] == w]
    fits[f"{w:g}"] = fit_with_bootstrap([runs[i]["n_train"] for i in cols],
                                        [runs[i]["error"] for i in cols], boot[:, cols])
  error_ci = np.percentile(boot, [2.5, 97.5], axis=0)
  rows = [{k: v for k, v in r.items() if k != "per_query"}
          | {"error_ci95": error_ci[:, i].tolist()} for i, r in enumerate(runs)]
  out = {"dataset": dataset.name, "method": config.method,
         "headline": f"error = 1 - mean of decoding and encoding {n_way}-way top-1 "
                     "(trial-averaged held-out responses, mean over subjects)",
         "n": "training records (subject, image pairs) of the run's fraction",
         "steps_per_run": config.train.steps,
         "bootstrap_resamples": "held-out images, per subject, shared by tasks and runs",
         **fits[f"{widths[0]:g}"], "width": widths[0], "fits": fits, "runs": rows,
         "provenance": provenance.record(config, dataset, started=started)}
  files.write_json(workdir / "scaling.json", out)
  write_csv(rows, workdir / "scaling.csv")
  plot(out, workdir / "scaling.png", title=f"{dataset.name}: {config.method}")
  # TensorBoard: the fits and the plot at the step every run trained to.
  summaries.write_outputs(workdir, config.train.steps, results={"scaling": out},
                          figures=[workdir / "scaling.png"])
  print(summary_table(out))
  print(f"\nscaling: {workdir / 'scaling.json'}   {workdir / 'scaling.csv'}   "
        f"{workdir / 'scaling.png'}")
  return out


def write_csv(rows: list[dict], path) -> None:
  fields = ("fraction", "width", "n_train", "decoding_top1", "encoding_top1", "error",
            "error_ci95_low", "error_ci95_high")

  def write(f):
    writer = csv.writer(f)
    writer.writerow(fields)
    for r in rows:
      writer.writerow([r["fraction"], r["width"], r["n_train"], f"{r['decoding_top1']:.6f}",
                       f"{r['encoding_top1']:.6f}", f"{r['error']:.6f}",
                       f"{r['error_ci95'][0]:.6f}", f"{r['error_ci95'][1]:.6f}"])

  files.atomic_write(path, write, "w")


def summary_table(out: dict) -> str:
  lines = [f"{'width':>6}{'fraction':>10}{'n_train':>9}{'decoding':>10}{'encoding':>10}"
           f"{'error':>8}   95% CI"]
  for r in out["runs"]:
    lines.append(f"{r['width']:>6g}{r['fraction']:>10g}{r['n_train']:>9}"
                 f"{r['decoding_top1']:>10.3f}{r['encoding_top1']:>10.3f}{r['error']:>8.3f}"
                 f"   [{r['error_ci95'][0]:.3f}, {r['error_ci95'][1]:.3f}]")
  for w, fit in out["fits"].items():
    lo, hi = fit["exponent_ci95"]
    lines.append(f"width {w}: error = {fit['a']:.3g} * n^{fit['exponent']:.3f} + "
                 f"{fit['c']:.3f}   exponent 95% CI [{lo:.3f}, {hi:.3f}]")
  return "\n".join(lines)


def plot(out: dict, path, *, title: str = "") -> None:
  """PNG: error vs n (log-log), each run with its bootstrap CI, each width's fit and band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for i, (w, fit) in enumerate(out["fits"].items()):
    color = f"C{i}"
    runs = [r for r in out["runs"] if f"{r['width']:g}" == w]
    n = np.array([r["n_train"] for r in runs])
    err = np.array([r["error"] for r in runs])
    ci = np.array([r["error_ci95"] for r in runs]).T
    ax.errorbar(n, err, yerr=[err - ci[0], ci[1] - err], fmt="o", color=color, capsize=3)
    curve = fit["curve"]
    lo, hi = fit["exponent_ci95"]
    ax.plot(curve["n"], curve["error"], color=color,
            label=(f"width {w}: " if len(out["fits"]) > 1 else "")
            + f"{fit['a']:.3g} n^{fit['exponent']:.2f} + {fit['c']:.2f}  "
            f"(exponent 95% CI [{lo:.2f}, {hi:.2f}])")
    ax.fill_between(curve["n"], *curve["error_ci95"], color=color, alpha=0.2)
  ax.set_xscale("log")
  ax.set_yscale("log")
  # Label each run's n and plain error values rather than powers of ten.
  ax.set_xticks(sorted({r["n_train"] for r in out["runs"]}))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  low, high = ax.get_ylim()
  ax.yaxis.set_major_locator(ticker.LogLocator(
      subs=np.arange(1, 10) if high / low < 10 else (1, 2, 5)))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("n (training images)")
  ax.set_ylabel("error (1 - mean top-1)")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)
