"""`jaxvna demo`: VNA against the direct encoding and direct decoding baselines (and every
other method whose record says `in_demo`, e.g. Gabor-LiT) and the Gabor-energy + ridge
reference, with the same data and budget; a table and a plot.
"""

from __future__ import annotations

import pathlib
import time

import jax

from jaxvna import files, registry
from jaxvna.data import dataset as dataset_lib
from jaxvna.evaluation import discriminative
from jaxvna.training import (distributed, preflight, provenance, summaries, train,
                             workdir_lock)

def run(config, workdir, *, force: bool = False) -> dict:
  """Trains every method of the demo (`registry.in_demo`), each in workdir/<method>, fits
  Gabor-ridge, prints and plots the table (workdir/results.json, workdir/demo.png).

  The null control is on unless `config.eval.null_control` is False: every method (and
  the ridge) again on shuffled training pairs, in workdir/<method>/null_control.
  """
  started = time.time()
  preflight.check_config(config)
  workdir = pathlib.Path(workdir)
  with workdir_lock.hold(workdir, command="demo"):
    return _demo(config, workdir, force=force, started=started)


def _demo(config, workdir: pathlib.Path, *, force: bool, started: float) -> dict:
  dataset = train.load_dataset(config)
  preflight.check_evaluation_data(config, dataset)
  method_configs = {}
  for method in (m.name for m in registry.in_demo()):
    method_configs[method] = config.copy_and_resolve_references()
    with method_configs[method].unlocked():
      method_configs[method].method = method
    # Before any training: a method the data cannot train would fail only at its turn.
    preflight.check_training_data(method_configs[method], dataset, jax.device_count())
  null_control = train.null_control_on(config, default=True)
  results = {}
  for method, method_config in method_configs.items():
    out = train.train_and_evaluate(method_config, workdir / method, force=force,
                                   dataset=dataset, null_control=null_control)
    results[method] = out["results"][method]
  if config.eval.gabor_ridge:
    results["gabor_ridge"] = discriminative.evaluate_gabor_ridge(config, dataset)
    if null_control:
      null = discriminative.evaluate_gabor_ridge(
          config, dataset_lib.shuffle_training_pairs(dataset, seed=config.seed))
      results["gabor_ridge"]["null_control"] = dict(
          null, chance_check=discriminative.chance_check(null))
  out = {"dataset": dataset.name, "results": results,
         "provenance": provenance.record(config, dataset, started=started)}
  if distributed.is_primary():
    files.write_json(workdir / "results.json", out)
    print(results_table(results))
    if null_control:
      print("\n" + null_control_table(results))
    plot_results(results, workdir / "demo.png", title=f"{dataset.name}: held-out images")
    # TensorBoard: the table and the plot at the step every method trained to.
    summaries.write_outputs(workdir, config.train.steps, results={"eval": results},
                            figures=[workdir / "demo.png"])
    print(f"\nresults: {workdir / 'results.json'}   plot: {workdir / 'demo.png'}")
  return out


def results_table(results: dict) -> str:
  """Top-1 accuracy (and 95% CI) of every method, task and N, as a text table."""
  n_ways = list(next(iter(results.values()))["decoding"])
  width = max(17, max(map(len, results)) + 2)  # e.g. "direct_encoding_ensemble"
  lines = [f"{'method':<{width}}{'task':<10}" + "".join(f"{'N=' + n:>18}" for n in n_ways)]
  for method, res in results.items():
    for task in ("decoding", "encoding"):
      cells = []
      for n in n_ways:
        r = res[task][n]
        cells.append(f"{r['top1']:.3f} [{r['top1_ci95'][0]:.2f},{r['top1_ci95'][1]:.2f}]")
      lines.append(f"{method:<{width}}{task:<10}" + "".join(f"{c:>18}" for c in cells))
  return "top-1 accuracy, trial-averaged responses, mean over subjects [95% CI]\n" + "\n".join(lines)


def null_control_table(results: dict) -> str:
  """The null controls: each method's subject-mean top-1 at every N of the check against
  the band a ranking without information falls in (99%), and whether it sits there."""
  checked = {m: r["null_control"]["chance_check"] for m, r in results.items()
             if "chance_check" in r.get("null_control", {})}
  if not checked:
    return ""
  n_ways = list(next(iter(checked.values()))["decoding"])
  lines = [f"{'method':<17}{'task':<10}" + "".join(f"{'N=' + n:>22}" for n in n_ways)
           + "  at chance"]
  for method, check in checked.items():
    for task in ("decoding", "encoding"):
      cells = [f"{c['top1']:.3f} [{c['band'][0]:.3f},{c['band'][1]:.3f}]"
               for c in (check[task][n] for n in n_ways)]
      ok = all(check[task][n]["at_chance"] for n in n_ways)
      lines.append(f"{method:<17}{task:<10}" + "".join(f"{c:>22}" for c in cells)
                   + f"  {'yes' if ok else 'NO'}")
  return ("null control (pairs shuffled within subject): top-1, mean over subjects "
          "[99% band of chance]\n" + "\n".join(lines))


TABLE_METHODS = ("vna", "direct_encoding", "direct_decoding", "gabor_ridge")
# The sessions-alone table also shows Gabor-LiT, the VNA family's other member.
FAMILY_TABLE_METHODS = ("vna", "direct_encoding", "direct_decoding", "gabor_lit",
                        "gabor_ridge")


def _cell(result: dict | None) -> str:
  """A table cell: top-1 [95% CI], or "-" for a method a run lacks."""
  if not result:
    return "-"
  return f"{result['top1']:.3f} [{result['top1_ci95'][0]:.2f}, {result['top1_ci95'][1]:.2f}]"


def _ci_above(cell: dict, others) -> bool:
  """Whether `cell`'s 95% CI lies wholly above the CI of every result in `others`."""
  return all(cell["top1_ci95"][0] > other["top1_ci95"][1] for other in others)


def _subject_rows(runs: list[dict], n_way: str, methods: tuple[str, ...]):
  """(subject, task, {method: N-way result}, VNA beats both direct, family gap or None)
  for every subject of every run; the gap is the VNA family's best (VNA or Gabor-LiT)
  minus Gabor-ridge, when both are among `methods`."""
  for results in runs:
    present = [m for m in methods if m in results]
    family = "gabor_lit" in present and "gabor_ridge" in present
    for subject in results["vna"]["per_subject"]:
      for task in ("decoding", "encoding"):
        cells = {m: results[m]["per_subject"][subject][task][n_way] for m in present}
        beats = _ci_above(cells["vna"], (cells["direct_encoding"], cells["direct_decoding"]))
        gap = (max(cells["vna"]["top1"], cells["gabor_lit"]["top1"])
               - cells["gabor_ridge"]["top1"]) if family else None
        yield subject, task, cells, beats, gap


def per_subject_table(runs: dict | list[dict], n_way: str = "10", *,
                      methods: tuple[str, ...] = TABLE_METHODS) -> str:
  """Markdown: each subject's N-way top-1 [95% CI] of VNA, the direct baselines and the
  ridge reference per task, and whether VNA's CI lies above both direct baselines'. With
  "gabor_lit" among `methods`, also the VNA family's best (VNA or Gabor-LiT) minus
  Gabor-ridge. `runs` is one run's results or a list of them (e.g. one per session trained
  alone), stacked under one header."""
  runs = [runs] if isinstance(runs, dict) else list(runs)
  methods = tuple(m for m in methods if m in runs[0])
  family = "gabor_lit" in methods and "gabor_ridge" in methods
  rows = ["| session | task | " + " | ".join(methods) + " | VNA beats both direct "
          "(CIs apart) |" + (" best of VNA family - gabor_ridge |" if family else ""),
          "|---|---|" + "---|" * (len(methods) + 1 + family)]
  for subject, task, cells, beats, gap in _subject_rows(runs, n_way, methods):
    rows.append(f"| {subject} | {task} | " + " | ".join(_cell(cells[m]) for m in methods)
                + f" | {'yes' if beats else 'no'} |" + (f" {gap:+.3f} |" if family else ""))
  return "\n".join(rows)


def per_subject_summary(runs: dict | list[dict], n_way: str = "10", *,
                        methods: tuple[str, ...] = TABLE_METHODS) -> str:
  """One line per task: in how many subjects VNA beats both direct baselines with CIs
  apart and (with "gabor_lit" and "gabor_ridge" among `methods`) the VNA family's best is
  at or above Gabor-ridge, with the range of that gap. Then a line counting the null
  controls' (task, N) cells of `methods` outside chance's 99% band, naming them."""
  runs = [runs] if isinstance(runs, dict) else list(runs)
  every_row, lines = list(_subject_rows(runs, n_way, methods)), []
  for task in ("decoding", "encoding"):
    rows = [r for r in every_row if r[1] == task]
    line = (f"{task}: VNA beats both direct (CIs apart) in {sum(r[3] for r in rows)} of "
            f"{len(rows)}")
    gaps = [r[4] for r in rows if r[4] is not None]
    if gaps:
      line += (f"; VNA family >= gabor_ridge in {sum(g >= 0 for g in gaps)} of {len(gaps)}"
               f" (gap {min(gaps):+.3f} to {max(gaps):+.3f})")
    lines.append(line)
  cells, off = 0, []
  for results in runs:
    for method in (m for m in methods if "null_control" in results.get(m, {})):
      check = results[method]["null_control"]["chance_check"]
      cells += sum(len(check[task]) for task in ("decoding", "encoding"))
      off += [f"{'+'.join(check['subjects'])} {method} {task} N={n}"
              for task, n in discriminative.off_chance(check)]
  if cells:
    lines.append(f"null controls outside chance's 99% band: {len(off)} of {cells} cells"
                 + (f" ({', '.join(off)})" if off else ""))
  return "\n".join(lines)


def per_subject_report(runs: dict | list[dict], n_way: str = "10", *,
                       methods: tuple[str, ...] = TABLE_METHODS) -> str:
  """`per_subject_table` and, after a blank line, `per_subject_summary`."""
  return (per_subject_table(runs, n_way, methods=methods) + "\n\n"
          + per_subject_summary(runs, n_way, methods=methods))


# Ensembles against ensembles; direct decoding, far below, is compared as one model.
ENSEMBLE_TABLE_METHODS = ("vna_ensemble", "direct_encoding_ensemble", "direct_decoding",
                          "gabor_lit", "gabor_lit_ensemble", "gabor_ridge")


def ensemble_report(runs: list[dict], n_way: str = "10") -> str:
  """Markdown, one row per subject and task of the runs that hold both "vna_ensemble" and
  "direct_encoding_ensemble" (each run one session's results merged from its ensemble and
  sessions-alone files): N-way top-1 [95% CI] of `ENSEMBLE_TABLE_METHODS` ("-" where a
  run lacks one), whether VNA's ensemble CI lies above direct encoding's ensemble's and
  direct decoding's, VNA's ensemble minus direct encoding's ensemble paired on the same
  images (`discriminative.paired_comparison`: exact expected top-1, 95% bootstrap
  interval over the held-out images; "-" for files without query ranks), and the VNA
  family's best (VNA's ensemble, Gabor-LiT or its ensemble) minus Gabor-ridge. After a
  blank line, per task, the counts of the three."""
  runs = [r for r in runs if "vna_ensemble" in r and "direct_encoding_ensemble" in r]
  methods = ENSEMBLE_TABLE_METHODS
  rows = ["| session | task | " + " | ".join(methods) + " | VNA's ensemble beats both direct"
          " (CIs apart) | vna_ensemble - direct_encoding_ensemble, paired [95% CI] |"
          " best of VNA family - gabor_ridge |",
          "|---|---|" + "---|" * (len(methods) + 3)]
  tasks = ("decoding", "encoding")
  wins, paired, gaps = ({t: [] for t in tasks} for _ in range(3))
  for results in runs:
    for subject in results["vna_ensemble"]["per_subject"]:
      for task in tasks:
        cells = {m: results[m]["per_subject"][subject][task][n_way] if m in results else None
                 for m in methods}
        beats = _ci_above(cells["vna_ensemble"], (cells["direct_encoding_ensemble"],
                                                  cells["direct_decoding"]))
        pair = [results[m] for m in ("vna_ensemble", "direct_encoding_ensemble")]
        diff = (discriminative.paired_comparison(*pair, task, n_way, subjects=[subject])
                if all("query_ranks" in r["per_subject"][subject] for r in pair) else None)
        family = [cells[m]["top1"] for m in ("vna_ensemble", "gabor_lit", "gabor_lit_ensemble")
                  if cells[m]]
        gap = max(family) - cells["gabor_ridge"]["top1"]
        wins[task].append(beats)
        paired[task].append(diff is not None and diff["ci95"][0] > 0)
        gaps[task].append(gap)
        paired_cell = "-" if diff is None else (f"{diff['difference']:+.3f} "
                                                f"[{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}]")
        rows.append(f"| {subject} | {task} | " + " | ".join(_cell(cells[m]) for m in methods)
                    + f" | {'yes' if beats else 'no'} | {paired_cell} | {gap:+.3f} |")
  counts = [f"{task}: VNA's ensemble beats both direct (CIs apart) in {sum(wins[task])} of "
            f"{len(wins[task])}; above direct encoding's ensemble, paired interval above 0, "
            f"in {sum(paired[task])} of {len(paired[task])}; VNA family >= gabor_ridge in "
            f"{sum(g >= 0 for g in gaps[task])} of {len(gaps[task])} (gap "
            f"{min(gaps[task]):+.3f} to {max(gaps[task]):+.3f})" for task in tasks]
  return "\n".join(rows) + "\n\n" + "\n".join(counts)


def plot_results(results: dict, path, *, title: str = "") -> None:
  """PNG: top-1 accuracy vs N for every method, one panel per task, chance dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, task in zip(axes, ("decoding", "encoding")):
    for method, res in results.items():
      keys = list(res[task])
      xs = [res[task][k]["num_candidates"] if k == "all" else int(k) for k in keys]
      ys = [res[task][k]["top1"] for k in keys]
      lo = [res[task][k]["top1_ci95"][0] for k in keys]
      hi = [res[task][k]["top1_ci95"][1] for k in keys]
      ax.plot(xs, ys, marker="o", label=method)
      ax.fill_between(xs, lo, hi, alpha=0.2)
    first = next(iter(results.values()))[task]
    xs = [first[k]["num_candidates"] if k == "all" else int(k) for k in first]
    ax.plot(xs, [1 / x for x in xs], "k--", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])  # the N evaluated, not log-scale minor labels
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("N (candidates)")
    ax.set_title(f"discriminative {task}")
  axes[0].set_ylabel("top-1 accuracy")
  axes[1].legend()
  fig.suptitle(title)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)
