"""miVAE's zero-shot sessions against the same sessions trained in.

  python benchmarks/mivae_same_session.py HELD_OUT.json TRAINED_IN.json [--n_way=10]

HELD_OUT.json is a miVAE result file of a run that held sessions out
(`mivae.holdout_subjects`, e.g. `jaxvna train --config=configs/mivae_cowley_v4.py`);
TRAINED_IN.json one of the same config trained on every session
(`--config.mivae.holdout_subjects="()"`), on the same data and split. Prints, per held-out
session and over them, the zero-shot top-1, the trained-in top-1 and their ratio with a
95% bootstrap interval over the held-out images (`mivae.evaluation.same_session_ratio`):
how much of `zero_shot_ratio`'s shortfall is the sessions themselves being hard.
"""

import json
import pathlib

from absl import app, flags

flags.DEFINE_string("n_way", "10", "The N of the N-way top-1.")
FLAGS = flags.FLAGS


def same_session_report(held_out: dict, trained_in: dict, n_way: str = "10") -> str:
  """The table of two result files' contents (see the module docstring)."""
  from jaxvna.methods.mivae import evaluation  # pylint: disable=g-import-not-at-top
  sessions = held_out["provenance"]["config"]["mivae"]["holdout_subjects"]
  if not sessions:
    raise app.UsageError("the first file's run held no session out "
                         "(provenance.config.mivae.holdout_subjects is empty)")
  if trained_in["provenance"]["config"]["mivae"]["holdout_subjects"]:
    raise app.UsageError("the second file's run held sessions out; it must train on all")
  if held_out["provenance"]["data"]["fingerprint"] != trained_in["provenance"]["data"]["fingerprint"]:
    raise app.UsageError("the two runs were evaluated on different data")
  out = evaluation.same_session_ratio(held_out["results"]["mivae"],
                                      trained_in["results"]["mivae"], sessions, n_way)
  return evaluation.same_session_table(out, n_way)


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("expected two result files: HELD_OUT.json TRAINED_IN.json")
  held_out, trained_in = (json.loads(pathlib.Path(p).read_text()) for p in argv[1:])
  print(same_session_report(held_out, trained_in, FLAGS.n_way))


if __name__ == "__main__":
  app.run(main)
