"""TensorBoard events and profiler traces of a run, read back with TensorBoard's own reader:
the events hold exactly metrics.jsonl, results.json and the PNG figures, also after a
resume; a profiled run writes a trace of exactly its profiled steps and ends with the
parameters and logs of the run without profile."""

import gzip
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from jaxvna.configs import vna_sim
from jaxvna.errors import ConfigError
from jaxvna.training import summaries, train
from toy_recordings import vna_demo_run

STEPS = 20


def tiny_config():
  c = vna_sim.get_config("vna,tiny")
  c.train.update(steps=STEPS, log_every=5, checkpoint_every=STEPS)
  c.eval.gabor_ridge = False
  c.eval.null_control = False  # tests/commands/test_demo.py covers it
  return c


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """`jaxvna demo` of VNA alone: W/vna is a `jaxvna train` run, W holds demo.png."""
  return vna_demo_run(tiny_config(), tmp_path_factory.mktemp("demo"))


def _events(workdir) -> event_accumulator.EventAccumulator:
  acc = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  return acc


def _scalars(acc, tag) -> dict[int, float]:
  events = acc.Scalars(tag)
  steps = [e.step for e in events]
  assert len(set(steps)) == len(steps), (tag, steps)  # one value per step
  return {e.step: e.value for e in events}


def _assert_events_equal_metrics(workdir) -> list[dict]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  acc = _events(workdir)
  columns = sorted({k for row in rows for k in row} - {"step"})
  assert sorted(t for t in acc.Tags()["scalars"] if t.startswith("train/")) == [
      f"train/{c}" for c in columns]
  for column in columns:
    logged = _scalars(acc, f"train/{column}")
    assert sorted(logged) == [row["step"] for row in rows], column
    np.testing.assert_array_equal(np.float32([logged[row["step"]] for row in rows]),
                                  np.float32([row[column] for row in rows]), err_msg=column)
  return rows


def _assert_eval_equals(acc, results: dict, step: int) -> None:
  expected = summaries.flatten_numbers(results, "eval")
  assert len(expected) > 20 and "eval/vna/decoding/10/top1" in expected
  assert sorted(t for t in acc.Tags()["scalars"] if t.startswith("eval/")) == sorted(expected)
  for tag, value in expected.items():
    assert _scalars(acc, tag) == {step: pytest.approx(np.float32(value), nan_ok=True)}, tag


def test_train_events_hold_metrics_jsonl_lr_temperature_and_results(demo_run):
  run = demo_run / "vna"
  rows = _assert_events_equal_metrics(run)
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  # The rate of each logged update (none skipped): the schedule at the step before it (up
  # to float32 rounding, jitted or not; the step after differs by far more).
  schedule = train.learning_rate_schedule(tiny_config())
  np.testing.assert_allclose([r["learning_rate"] for r in rows],
                             [float(schedule(r["step"] - 1)) for r in rows], rtol=1e-5)
  assert rows[0]["learning_rate"] != rows[-1]["learning_rate"]  # warmup, then decay
  assert all(0 < r["temperature"] < 1 for r in rows)
  results = json.loads((run / "results.json").read_text())["results"]
  _assert_eval_equals(_events(run), results, STEPS)


def test_demo_events_hold_its_results_and_its_figure(demo_run):
  acc = _events(demo_run)
  results = json.loads((demo_run / "results.json").read_text())["results"]
  _assert_eval_equals(acc, results, STEPS)
  assert acc.Tags()["images"] == ["figures/demo"]
  [image] = acc.Images("figures/demo")
  with Image.open(demo_run / "demo.png") as png:
    expected = np.asarray(png.convert("RGB"))
  with Image.open(io.BytesIO(image.encoded_image_string)) as logged:
    np.testing.assert_array_equal(np.asarray(logged.convert("RGB")), expected)
  assert image.step == STEPS


def test_profiled_run_traces_its_steps_and_ends_as_the_plain_run(tmp_path, demo_run):
  config = tiny_config()
  config.train.profile_steps = "3:6"
  train.train(config, tmp_path, dataset=train.load_dataset(config))
  digest = lambda w: json.loads((w / "summary.json").read_text())["params_digest"]
  assert digest(tmp_path) == digest(demo_run / "vna")
  assert ((tmp_path / "metrics.jsonl").read_text()
          == (demo_run / "vna" / "metrics.jsonl").read_text())
  _assert_events_equal_metrics(tmp_path)

  traces = summaries.trace_files(tmp_path)
  assert sorted(p.name.split(".", 1)[1] for p in traces) == ["json.gz", "xplane.pb"]
  assert all(p.stat().st_size > 0 for p in traces)
  [perfetto] = [p for p in traces if p.name == "perfetto_trace.json.gz"]
  trace = json.loads(gzip.decompress(perfetto.read_bytes()))
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  # One annotated call per step, of steps 3 to 6 only.
  assert sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train") == [
      3, 4, 5, 6]
  assert not summaries.trace_files(demo_run / "vna")  # no profile unless asked


def test_a_resumed_log_replaces_what_an_attempt_logged_past_its_checkpoint(tmp_path):
  log = train.MetricsLog(tmp_path / "metrics.jsonl")
  for step in (5, 10, 15, 20):  # the attempt killed after 20, its last checkpoint at 10
    log.write(step, {"loss": 100.0 + step})
  log.close()
  log = train.MetricsLog(tmp_path / "metrics.jsonl", after_step=10)
  for step in (15, 20):
    log.write(step, {"loss": float(step)})
  log.close()
  rows = _assert_events_equal_metrics(tmp_path)
  assert [(r["step"], r["loss"]) for r in rows] == [(5, 105), (10, 110), (15, 15), (20, 20)]


def test_profile_ranges_parse_and_a_malformed_one_is_a_config_error_naming_the_field():
  assert summaries.parse_profile_steps(" 2 : 9 ") == (2, 9)
  assert summaries.parse_profile_steps("4:4") == (4, 4)
  assert summaries.parse_profile_steps("") is None
  for value in ("5:2", "0:3", "5", "a:b", "1:2:3", 7):
    with pytest.raises(ConfigError, match=r"^config\.train\.profile_steps=.*: expected '' "):
      summaries.parse_profile_steps(value)


def test_the_profile_flag_sets_the_config_field_and_is_checked_before_anything_runs(tmp_path):
  out = subprocess.run([sys.executable, "-m", "jaxvna.cli", "train", "--config=" +
                        vna_sim.__file__ + ":tiny", f"--workdir={tmp_path / 'run'}",
                        "--profile_steps=5:2"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip() == (
      "jaxvna train: error: config.train.profile_steps='5:2': expected '' (off) or 'A:B', "
      "integers with 1 <= A <= B")
  assert not (tmp_path / "run").exists()
