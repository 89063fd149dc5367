"""Real-data comparison: VNA vs direct encoding vs direct decoding vs Gabor-ridge on every
Cowley et al. (2023) macaque V4 session, held-out images, 10-way top-1 per session.

  python benchmarks/real_v4.py --workdir=W [--results=results/v4.json] \
      [--plot=docs/v4.png] [--config=configs/vna_cowley_v4.py] [--config.train.steps=...]

Trains one model per method on all sessions together (each session its own neurons and
read-in), evaluates each session's held-out images, writes W/results.json (as `jaxvna
demo`, with the null controls and the provenance), W/demo.png and W/v4_table.md, prints
the Markdown table, and copies the result file and the plot where --results and --plot say
(`jaxvna reproduce v4` runs this command again). `--config=configs/vna_allen_v1.py` runs
the same comparison on the Allen mouse V1 scenes.

  python benchmarks/real_v4.py --table results/v4_alone_*.json

prints, without training, the table of several result files stacked (e.g. every session
trained alone, Gabor-LiT included), how many sessions VNA and its family win, and the null
controls outside chance's band.

  python benchmarks/real_v4.py --ensembles results/v4_alone_*.json \
      results/select_ensemble_*_v4_*.json

prints, per session with three-seed ensembles of both VNA and direct encoding (`jaxvna
select`, see the README), the two ensembles against each other, direct decoding,
Gabor-LiT (and its ensemble where run) and Gabor-ridge, and the counts.
"""

import pathlib
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "vna_cowley_v4.py"),
                                "Run config.", lock_config=True)
flags.DEFINE_string("workdir", "workdir_v4", "Output folder.")
flags.DEFINE_string("n_way", "10", "The N of the table.")
flags.DEFINE_string("results", None, "Copy W/results.json here (e.g. results/v4.json).")
flags.DEFINE_string("plot", None, "Copy W/demo.png here (e.g. docs/v4.png).")
flags.DEFINE_bool("table", False, "Print the stacked table of the result files given as "
                  "arguments instead of training.")
flags.DEFINE_bool("ensembles", False, "Print the ensembles' table of the sessions-alone and "
                  "ensemble result files given as arguments instead of training.")
FLAGS = flags.FLAGS


def print_stacked(paths: list[str]) -> None:
  import json
  from jaxvna.commands import demo
  runs = [json.loads(pathlib.Path(p).read_text())["results"] for p in sorted(paths)]
  print(demo.per_subject_report(runs, FLAGS.n_way, methods=demo.FAMILY_TABLE_METHODS))


def merged_by_session(paths: list[str]) -> list[dict]:
  """The results of one-session files merged per session (in session order); a method
  found in several files is taken from the first."""
  import json
  sessions: dict[str, dict] = {}
  for path in sorted(paths):
    results = json.loads(pathlib.Path(path).read_text())["results"]
    subjects = {s for r in results.values() for s in r.get("per_subject", {})}
    if len(subjects) != 1:
      raise app.UsageError(f"{path}: expected the results of one session, found "
                           f"{sorted(subjects)}")
    merged = sessions.setdefault(subjects.pop(), {})
    for method, result in results.items():
      merged.setdefault(method, result)
  return [sessions[s] for s in sorted(sessions)]


def main(argv):
  if FLAGS.table or FLAGS.ensembles:
    if len(argv) < 2:
      raise app.UsageError("--table and --ensembles need result files, e.g. "
                           "results/v4_alone_*.json")
    if FLAGS.ensembles:
      from jaxvna.commands import demo
      return print(demo.ensemble_report(merged_by_session(argv[1:]), FLAGS.n_way))
    return print_stacked(argv[1:])
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from jaxvna.commands import demo
  out = demo.run(FLAGS.config, FLAGS.workdir)
  text = demo.per_subject_table(out["results"], FLAGS.n_way)
  (pathlib.Path(FLAGS.workdir) / "v4_table.md").write_text(text + "\n")
  print(f"\n{FLAGS.n_way}-way top-1 [95% CI over candidate draws], trial-averaged responses\n")
  print(text)
  for name, destination in (("results.json", FLAGS.results), ("demo.png", FLAGS.plot)):
    if destination:
      shutil.copyfile(pathlib.Path(FLAGS.workdir) / name, destination)


if __name__ == "__main__":
  sys.exit(app.run(main))
