"""Tests of the ArrayRecord TFDS builders: round trip, atomic preparation, configs."""

import dataclasses
import json
import re
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvna.data import pipeline, tfds_builders
from jaxvna.data.dataset import DataError, Dataset, Recording
from jaxvna.errors import RefusedPathError

tfds.disable_progress_bar()

FIELDS = ("images", "responses", "neuron_coords", "split", "stimulus_ids")


def make_dataset(seed=0, *, feature_dims=(None, None), id_offset=2**40):
  """Two recordings with different repeat and neuron counts; ground truth on the first.

  `feature_dims` gives each recording (N, F) float32 image_features of that F, or none;
  recording i's stimulus ids are offset by i * `id_offset`.
  """
  rng = np.random.default_rng(seed)
  recordings = []
  for i, (name, n, r, k, f) in enumerate((("s0", 20, 3, 4, feature_dims[0]),
                                          ("s1", 12, 1, 6, feature_dims[1]))):
    responses = rng.normal(size=(n, r, k)).astype(np.float32)
    if r > 1:
      responses[::3, 1:] = np.nan  # every third image has a single repeat
    recordings.append(Recording(
        name=name, images=rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8),
        responses=responses, neuron_coords=rng.normal(size=(k, 3)).astype(np.float32),
        split=(np.arange(n) % 4 % 3).astype(np.int8),
        stimulus_ids=rng.permutation(1000)[:n].astype(np.int64) + id_offset * i,
        source=f"fake/{name}.npz",
        truth={"latents": rng.normal(size=(n, 2)).astype(np.float32),
               "types": np.arange(k, dtype=np.int8)} if i == 0 else None,
        image_features=None if f is None else rng.normal(size=(n, f)).astype(np.float32)))
  return Dataset("toy", tuple(recordings))


def use_reader(monkeypatch, make):
  """Makes the builders read `make()` (called on each read); returns the reader calls."""
  calls = []

  def read(kind, **kwargs):
    calls.append((kind, kwargs))
    return make()

  monkeypatch.setattr(tfds_builders, "read_dataset", read)
  return calls


@pytest.fixture
def fake_reader(monkeypatch):
  """Makes the builders read `make_dataset()` and records the reader calls."""
  dataset = make_dataset()
  return dataset, use_reader(monkeypatch, lambda: dataset)


def assert_datasets_equal(a, b):
  assert a.name == b.name and [r.name for r in a.recordings] == [r.name for r in b.recordings]
  for x, y in zip(a.recordings, b.recordings):
    for field in FIELDS:
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)
      assert getattr(x, field).dtype == getattr(y, field).dtype, field
    assert x.source == y.source
    assert (x.image_features is None) == (y.image_features is None)
    if x.image_features is not None:
      np.testing.assert_array_equal(x.image_features, y.image_features)
      assert x.image_features.dtype == y.image_features.dtype == np.float32
    assert (x.truth is None) == (y.truth is None)
    for key in x.truth or {}:
      np.testing.assert_array_equal(x.truth[key], y.truth[key])


def test_round_trip_through_array_record(tmp_path, fake_reader):
  dataset, calls = fake_reader
  path = tfds_builders.prepare("npz", tmp_path, reader_kwargs={"path": "fake.npz"})
  assert calls == [("npz", {"path": "fake.npz"})]
  assert path == tfds_builders.prepared_dir("npz", tmp_path, reader_kwargs={"path": "fake.npz"})
  assert path.parent.parent.name == "jaxvna_npz" and tfds_builders.is_prepared(path)
  assert "tensorflow" not in sys.modules
  # The metadata alone rebuilds the whole Dataset, ground truth included.
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))
  assert_datasets_equal(dataset, tfds_builders.load_prepared("npz", tmp_path,
                                                             reader_kwargs={"path": "fake.npz"}))
  meta = json.loads((path / tfds_builders.METADATA_FILE).read_text())
  assert [r["num_neurons"] for r in meta["recordings"]] == [4, 6]
  assert meta["record_shape"] == [3, 6] and meta["reader_kwargs"] == {"path": "fake.npz"}

  # TFDS's own reader sees every record, NaN-padded, with its ids.
  config = path.parent.name
  for split in ("train", "validation", "test"):
    records = tfds.data_source(f"jaxvna_npz/{config}", data_dir=tmp_path, split=split)
    expected = {(s, int(sid)) for s, rec in enumerate(dataset.recordings)
                for sid in rec.stimulus_ids[rec.indices(split)]}
    seen = set()
    for record in records:
      s, sid = int(record["subject"]), int(record["stimulus_id"])
      rec = dataset.recordings[s]
      i = int(np.flatnonzero(rec.stimulus_ids == sid)[0])
      r, k = rec.responses.shape[1:]
      assert record["responses"].shape == (3, 6) and record["responses"].dtype == np.float32
      np.testing.assert_array_equal(record["responses"][:r, :k], rec.responses[i])
      assert np.isnan(record["responses"][r:]).all() and np.isnan(record["responses"][:, k:]).all()
      np.testing.assert_array_equal(record["image"], rec.images[i])
      assert record["image"].dtype == np.uint8 and int(record["num_neurons"]) == k
      seen.add((s, sid))
    assert seen == expected and len(records) == len(expected)


def test_prepared_source_gives_the_records_and_batches_of_the_in_memory_source(
    tmp_path, fake_reader):
  dataset, _ = fake_reader
  path = tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  prepared = tfds_builders.PreparedSource(path, "train")
  memory = pipeline.DatasetSource(dataset, "train")
  assert len(prepared) == len(memory)
  np.testing.assert_array_equal(prepared.subjects, memory.subjects)
  assert prepared.neuron_counts == memory.neuron_counts == (4, 6)
  assert prepared.record_shape == memory.record_shape and prepared.image_shape == (6, 5, 3)
  for i in range(len(memory)):
    a, b = prepared[i], memory[i]
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
      assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key
  make = lambda src: pipeline.make_local_batches(src, global_batch_size=8, rows=slice(0, 8),
                                                 seed=0, subject_weighting="equal")
  for b in range(3):
    x, y = make(prepared)[b], make(memory)[b]
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert x["stimulus_id"].dtype == np.int64
  # Nested fractions keep the same records; `take` stacks what indexing gives.
  for fraction in (0.5, 1.0):
    part = tfds_builders.PreparedSource(path, "train", fraction=fraction, subset_seed=3)
    same = pipeline.DatasetSource(dataset, "train", fraction=fraction, subset_seed=3)
    assert len(part) == len(same) < len(memory) + (fraction == 1.0)
    rows = np.array([len(same) - 1, 0, 1, 0])
    taken, expected = part.take(rows), same.take(rows)
    assert taken.keys() == expected.keys()
    for key in taken:
      np.testing.assert_array_equal(taken[key], expected[key], err_msg=key)
      assert taken[key].dtype == expected[key].dtype, key
  with pytest.raises(IndexError):
    prepared[len(prepared)]
  # On device (64-bit types off) ids must fit int32; these do not, and the error says so.
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  with pytest.raises(DataError, match="do not fit int32"):
    next(pipeline.make_train_iterator(prepared, global_batch_size=8, mesh=mesh, seed=0,
                                      subject_weighting="equal"))


def test_image_features_round_trip_through_array_record(tmp_path, monkeypatch):
  dataset = make_dataset(feature_dims=(7, 7))
  use_reader(monkeypatch, lambda: dataset)
  path = tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))
  meta = json.loads((path / tfds_builders.METADATA_FILE).read_text())
  assert meta["image_feature_dim"] == 7
  # TFDS opening the copy by name (no dataset in hand) takes the features from the copy.
  records = tfds.data_source("jaxvna_npz/default", data_dir=tmp_path, split="test")
  rec = dataset.recordings[0]
  first = rec.indices("test")[0]
  assert int(records[0]["subject"]) == 0 and records[0]["image_features"].shape == (7,)
  np.testing.assert_array_equal(records[0]["image_features"], rec.image_features[first])
  # A dataset without features stores none (and says so in the metadata).
  use_reader(monkeypatch, make_dataset)
  plain = tfds_builders.prepare("npz", tmp_path / "plain", reader_kwargs={})
  assert json.loads((plain / tfds_builders.METADATA_FILE).read_text())[
      "image_feature_dim"] is None
  assert "image_features" not in tfds_builders.PreparedSource(plain, "train")[0]


def test_training_batches_of_a_prepared_source_carry_the_image_features(tmp_path, monkeypatch):
  dataset = make_dataset(feature_dims=(7, 7), id_offset=1000)  # ids fit int32 on device
  use_reader(monkeypatch, lambda: dataset)
  prepared = tfds_builders.PreparedSource(tfds_builders.prepare("npz", tmp_path,
                                                                reader_kwargs={}), "train")
  memory = pipeline.DatasetSource(dataset, "train")
  for i in range(len(memory)):
    a, b = prepared[i], memory[i]
    assert a.keys() == b.keys() and "image_features" in a
    np.testing.assert_array_equal(a["image_features"], b["image_features"])
    assert a["image_features"].dtype == np.float32
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  make = lambda src: pipeline.make_train_iterator(src, global_batch_size=8, mesh=mesh, seed=0,
                                                  subject_weighting="equal")
  from_prepared, from_memory = make(prepared), make(memory)
  for _ in range(3):
    x, y = next(from_prepared), next(from_memory)
    assert x.keys() == y.keys() and x["image_features"].shape == (8, 7)
    assert x["image_features"].dtype == np.float32
    for key in x:
      np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)


def test_image_features_that_cannot_be_stored_fail_before_anything_is_written(
    tmp_path, monkeypatch):
  def check_nothing_written():
    assert not tfds_builders.prepared_dir("npz", tmp_path).exists()
    assert not [p for p in tmp_path.rglob("*") if "incomplete" in p.name]

  # Features of two dimensions, or on some recordings only: the dataset itself refuses.
  for dims in ((7, 5), (7, None)):
    use_reader(monkeypatch, lambda dims=dims: make_dataset(feature_dims=dims))
    with pytest.raises(DataError, match="disagree on image_features"):
      tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
    check_nothing_written()
  # Non-float32 features would not come back as the same arrays: the builder refuses.
  dataset = make_dataset(feature_dims=(7, 7))
  widened = dataclasses.replace(dataset.recordings[1], image_features=dataset.recordings[
      1].image_features.astype(np.float64))
  use_reader(monkeypatch, lambda: Dataset("toy", (dataset.recordings[0], widened)))
  with pytest.raises(DataError, match=r"fake/s1\.npz: field 'image_features': TFDS copies "
                                      r"store float32, got float64"):
    tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  check_nothing_written()


def test_builders_prepare_only_through_prepare(tmp_path):
  builder = tfds.builder("jaxvna_npz", data_dir=tmp_path)
  with pytest.raises(DataError, match="prepare copies with jaxvna.data.tfds_builders.prepare"):
    builder.download_and_prepare(file_format="array_record")


def test_failed_preparation_leaves_nothing_complete_and_a_rerun_succeeds(
    tmp_path, fake_reader, monkeypatch):
  dataset, _ = fake_reader
  make_record = pipeline.make_record
  made = []

  def failing(*args, **kwargs):
    made.append(1)
    if len(made) > 5:
      raise RuntimeError("disk on fire")
    return make_record(*args, **kwargs)

  monkeypatch.setattr(pipeline, "make_record", failing)
  with pytest.raises(RuntimeError, match="disk on fire"):
    tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  path = tfds_builders.prepared_dir("npz", tmp_path)
  assert not path.exists() and not tfds_builders.is_prepared(path)
  leftovers = [p for p in tmp_path.rglob("*") if "incomplete" in p.name]
  assert not leftovers
  with pytest.raises(DataError, match="not a complete prepared dataset"):
    tfds_builders.read_prepared(path)

  monkeypatch.setattr(pipeline, "make_record", make_record)
  assert tfds_builders.prepare("npz", tmp_path, reader_kwargs={}) == path
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))


def test_incomplete_folder_is_rebuilt_and_complete_one_reused(tmp_path, fake_reader):
  dataset, calls = fake_reader
  path = tfds_builders.prepared_dir("npz", tmp_path)
  path.mkdir(parents=True)
  (path / "dataset_info.json").write_text("{}")  # as if copied half-way
  with pytest.raises(DataError, match="jaxvna_metadata.json"):
    tfds_builders.PreparedSource(path, "train")
  assert tfds_builders.prepare("npz", tmp_path, reader_kwargs={}) == path
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))
  tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  assert len(calls) == 1  # reused, not read again
  tfds_builders.prepare("npz", tmp_path, reader_kwargs={}, overwrite=True)
  assert len(calls) == 2
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))
  assert [p.name for p in path.parent.iterdir()] == ["1.0.0"]


def snapshot(folder):
  """{relative path: bytes (None for a folder)} of everything under `folder`."""
  return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
          for p in sorted(folder.rglob("*"))}


def test_prepare_refuses_a_destination_it_did_not_write(tmp_path, fake_reader):
  dataset, calls = fake_reader
  path = tfds_builders.prepared_dir("npz", tmp_path)
  path.mkdir(parents=True)
  (path / "results.csv").write_bytes(b"a,b\n1,2\n")
  (path / "dataset_info.json").write_text("{}")
  before = snapshot(tmp_path)
  with pytest.raises(RefusedPathError, match=re.escape(
      f"{path}: refusing to replace a folder holding 2 entries (dataset_info.json, "
      "results.csv) (not a copy's: results.csv): it is not a prepared jaxvna dataset")):
    tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  assert not calls and snapshot(tmp_path) == before  # refused before reading anything
  for p in path.iterdir():
    p.unlink()
  path.rmdir()
  path.write_bytes(b"a file")
  with pytest.raises(RefusedPathError, match=re.escape(f"{path}: refusing to replace a file")):
    tfds_builders.prepare("npz", tmp_path, reader_kwargs={})
  assert path.read_bytes() == b"a file" and not calls

  # A complete copy with a user's file in it is read, but never rebuilt over.
  path.unlink()
  assert tfds_builders.prepare("npz", tmp_path, reader_kwargs={}) == path
  (path / "notes.txt").write_bytes(b"mine")
  before = snapshot(tmp_path)
  assert tfds_builders.prepare("npz", tmp_path, reader_kwargs={}) == path
  with pytest.raises(RefusedPathError, match=r"8 entries \(.*\) \(not a copy's: notes.txt\)"):
    tfds_builders.prepare("npz", tmp_path, reader_kwargs={}, overwrite=True)
  assert snapshot(tmp_path) == before and len(calls) == 1
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))


def test_configs_are_named_by_reader_kwargs():
  assert tfds_builders.builder_config("simulator", {}).name == "default"
  small = tfds_builders.builder_config("jaxvna_simulator", {"image_size": 32, "num_images": 1000})
  assert small.name == "small"
  custom = tfds_builders.builder_config("simulator", {"seed": 3})
  assert custom.name.startswith("kw") and custom.reader_kwargs == {"seed": 3}
  assert tfds_builders.builder_config("simulator", {"seed": 3}).name == custom.name
  assert tfds_builders.builder_config("simulator", {"seed": 4}).name != custom.name
  names = {kind: cls.name for kind, cls in tfds_builders.BUILDERS.items()}
  assert names == {"simulator": "jaxvna_simulator", "cowley_v4": "cowley_v4",
                   "allen_natural_scenes": "allen_natural_scenes",
                   "sensorium": "sensorium2022", "npz": "jaxvna_npz"}
  with pytest.raises(ValueError, match="unknown data kind 'mnist'"):
    tfds_builders.builder_class("mnist")


def test_sensorium_reads_session_folders_from_the_manual_folder(tmp_path, fake_reader):
  dataset, calls = fake_reader
  manual = tmp_path / "manual"
  manual.mkdir()
  with pytest.raises(DataError, match=r"(?s)no Sensorium session folders.*Sensorium 2022 static"):
    tfds_builders.prepare("sensorium", tmp_path / "tfds", reader_kwargs={"roots": str(manual)})
  with pytest.raises(DataError, match="field 'roots': missing"):
    tfds_builders.prepare("sensorium", tmp_path / "tfds", reader_kwargs={})
  for session in ("mouse_b", "mouse_a"):
    (manual / session / "data").mkdir(parents=True)
    (manual / session / "meta").mkdir()
  (manual / "notes").mkdir()  # not a session: no data/ and meta/

  path = tfds_builders.prepare("sensorium", tmp_path / "tfds",
                               reader_kwargs={"roots": str(manual), "image_size": 36})
  assert calls[-1] == ("sensorium", {"image_size": 36, "roots": [str(manual / "mouse_a"),
                                                                  str(manual / "mouse_b")]})
  assert path.parent.parent.name == "sensorium2022"
  assert_datasets_equal(dataset, tfds_builders.read_prepared(path))

  # Chosen sessions keep their order and make another config.
  chosen = {"roots": [str(manual / "mouse_b"), str(manual / "mouse_a")]}
  other = tfds_builders.prepare("sensorium", tmp_path / "tfds", reader_kwargs=chosen)
  assert calls[-1] == ("sensorium", {"roots": chosen["roots"]})
  assert other != path and tfds_builders.is_prepared(other)
  with pytest.raises(DataError, match="share one parent"):
    tfds_builders.prepare("sensorium", tmp_path / "tfds",
                          reader_kwargs={"roots": [str(manual / "mouse_a"), str(tmp_path)]})
