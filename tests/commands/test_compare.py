"""`jaxvna compare`: paired differences of two result files on the same images."""

import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxvna.commands import compare
from jaxvna.errors import UserError
from jaxvna.evaluation import discriminative

EVAL = ml_collections.ConfigDict(dict(n_ways=(2, 10), draws=20, seed=0))
PROVENANCE = {"data": {"fingerprint": "abc"}, "config": {"eval": {"split": "test"}},
              "command": "made by the test"}


def _results(noise: dict[str, float], seed: int) -> dict:
  """A results.json content: one method per entry of `noise`, two subjects of 60 images,
  each method's response embedding the image embedding plus that much noise."""
  rng = np.random.default_rng(seed)
  out = {}
  for method, scale in noise.items():
    per_subject = {}
    for name in ("s1", "s2"):
      images = np.random.default_rng(len(name) + ord(name[-1])).normal(size=(60, 8))
      mean = images + scale * rng.normal(size=images.shape)
      reprs = dict(image_repr=images, mean_repr=mean, trial_repr=mean,
                   trial_images=np.arange(60), metric="cosine")
      per_subject[name] = discriminative.score_representations(reprs, EVAL)
    out[method] = dict(discriminative.combine_subjects(per_subject), per_subject=per_subject)
  return json.loads(json.dumps({"results": out, "provenance": PROVENANCE}))


@pytest.fixture
def files(tmp_path):
  a, b = tmp_path / "a.json", tmp_path / "b" / "results.json"
  b.parent.mkdir()
  a.write_text(json.dumps(_results({"vna": 0.5, "direct_encoding": 1.5}, seed=0)))
  b.write_text(json.dumps(_results({"vna": 0.5}, seed=0)))
  return a, b


def test_a_better_model_is_above_and_a_model_equals_itself(files, tmp_path):
  a, b = files
  out = compare.run(a, a, "vna,direct_encoding", out=tmp_path / "c.json")
  for per_task in [*out["subjects"].values(), out["all"]]:
    for d in per_task.values():
      assert d["ci95"][0] > 0 and d["ci95"][0] <= d["difference"] <= d["ci95"][1]
  # The same model in a second file (a workdir) differs by exactly nothing.
  same = compare.run(a, b.parent, "vna")
  assert all(d["difference"] == 0 and d["ci95"] == [0, 0]
             for per_task in same["subjects"].values() for d in per_task.values())
  assert json.loads((tmp_path / "c.json").read_text())["all"] == out["all"]
  lines = compare.table(out).splitlines()
  assert lines[0] == f"A = {a}:vna" and lines[1] == f"B = {a}:direct_encoding"
  assert len(lines) == 5 + 3 * 2 and all(l.endswith("| A above B |") for l in lines[5:])
  # Over both subjects the difference is the mean of theirs.
  assert out["all"]["decoding"]["difference"] == pytest.approx(np.mean(
      [out["subjects"][n]["decoding"]["difference"] for n in ("s1", "s2")]))


def test_what_cannot_be_paired_is_one_line(files, tmp_path):
  a, b = files
  with pytest.raises(UserError, match="no results of 'direct_encoding'"):
    compare.run(a, b, "vna,direct_encoding")
  other = json.loads(b.read_text())
  other["provenance"]["data"]["fingerprint"] = "xyz"
  b.write_text(json.dumps(other))
  with pytest.raises(UserError, match="different data or splits"):
    compare.run(a, b, "vna")
  old = json.loads(a.read_text())
  del old["results"]["vna"]["per_subject"]["s1"]["query_ranks"]
  a.write_text(json.dumps(old))
  with pytest.raises(UserError, match="query_ranks: missing"):
    compare.run(a, a, "vna,direct_encoding")
  with pytest.raises(UserError, match="no such result file"):
    compare.run(tmp_path / "none.json", a, "vna")
  with pytest.raises(UserError, match="--methods"):
    compare.run(a, a, "vna,direct_encoding,x")
  # --out never replaces a file it did not write.
  mine = tmp_path / "notes.json"
  mine.write_text("{}")
  with pytest.raises(UserError):
    compare.run(a, a, "direct_encoding", out=mine)
  assert mine.read_text() == "{}"


def test_cli_prints_the_table_and_refuses_in_one_line(files):
  a, _ = files
  ok = subprocess.run([sys.executable, "-m", "jaxvna.cli", "compare", str(a), str(a),
                       "--methods=vna,direct_encoding", "--n_way=2"],
                      capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  assert "A - B, 2-way top-1" in ok.stdout and "| all | encoding |" in ok.stdout
  bad = subprocess.run([sys.executable, "-m", "jaxvna.cli", "compare", str(a), str(a),
                        "--methods=vna,gabor_lit"], capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.count("\n") == 1
  assert "no results of 'gabor_lit'" in bad.stderr
