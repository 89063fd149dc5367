"""Tests for the real-data readers (jaxvna.data.readers)."""

import io
import re
import sys
import types
import zipfile

import numpy as np
import pytest
from PIL import Image

from jaxvna.data import readers
from jaxvna.data.dataset import SPLITS, DataError, Dataset, Recording
from jaxvna.errors import RefusedPathError


def raises(*parts):
  """pytest.raises(DataError) whose message contains every part, in order."""
  return pytest.raises(DataError, match=".*".join(re.escape(str(p)) for p in parts))


# ---------------------------------------------------------------------------------------
# Real data


@pytest.fixture(scope="module")
def cowley_root(real_data_dir):
  return real_data_dir / "cowley_v4"


@pytest.fixture(scope="module")
def cowley_three(cowley_root):
  return readers.read_cowley_v4(cowley_root, ["190925", "210322", "210325"])


@pytest.mark.real_data
def test_cowley_raw_session_matches_files(cowley_root, cowley_three):
  rec = cowley_three["210325"]
  assert rec.source.endswith("responses_raw/responses_210325.npy")
  assert rec.images.shape == (640, 112, 112, 3) and rec.images.dtype == np.uint8
  assert rec.num_neurons == 50 and rec.responses.shape == (640, 10, 50)
  assert rec.num_repeats.max() == 10 and rec.num_repeats.min() == 6
  assert rec.neuron_coords.shape == (50, 0)
  averaged = np.load(cowley_root / "responses_repeat_averaged" / "responses_210325.npy")
  np.testing.assert_allclose(rec.mean_responses, averaged.T, atol=1e-5)
  # Column i is image i+1 of the zip (file-name order).
  with zipfile.ZipFile(cowley_root / "images" / "images_210325.zip") as z:
    first = np.asarray(Image.open(io.BytesIO(z.read("image0001.jpg"))).convert("RGB"))
    last = np.asarray(Image.open(io.BytesIO(z.read("image0640.jpg"))).convert("RGB"))
  np.testing.assert_array_equal(rec.images[0], first)
  np.testing.assert_array_equal(rec.images[-1], last)


@pytest.mark.real_data
def test_cowley_averaged_session_and_duplicate_images(cowley_root, cowley_three):
  rec = cowley_three["190925"]
  assert rec.source.endswith("responses_repeat_averaged/responses_190925.npy")
  assert rec.num_images == 1200 and rec.num_neurons == 36 and rec.responses.shape[1] == 1
  np.testing.assert_allclose(
      rec.responses[:, 0, :],
      np.load(cowley_root / "responses_repeat_averaged" / "responses_190925.npy").T, atol=1e-5)
  # The zip is stored out of order; images 900-1199 repeat 0-299 exactly.
  np.testing.assert_array_equal(rec.images[900:], rec.images[:300])
  np.testing.assert_array_equal(rec.split[900:], rec.split[:300])
  assert len(np.unique(rec.stimulus_ids)) == 1200


@pytest.mark.real_data
def test_cowley_shared_images_share_ids_and_splits(cowley_three):
  a, b = cowley_three["210322"], cowley_three["210325"]
  shared, ia, ib = np.intersect1d(a.stimulus_ids, b.stimulus_ids, return_indices=True)
  assert len(shared) == 600
  np.testing.assert_array_equal(a.images[ia], b.images[ib])
  np.testing.assert_array_equal(a.split[ia], b.split[ib])
  assert len(np.intersect1d(cowley_three["190925"].stimulus_ids, a.stimulus_ids)) == 0


@pytest.mark.real_data
def test_cowley_split_is_seeded_and_near_fractions(cowley_root, cowley_three):
  rec = cowley_three["210325"]
  fractions = np.bincount(rec.split, minlength=3) / rec.num_images
  np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.05)
  again = readers.read_cowley_v4(cowley_root, "210325", split_seed=0)["210325"]
  other = readers.read_cowley_v4(cowley_root, "210325", split_seed=1,
                                 split_fractions=(0.5, 0.25, 0.25))["210325"]
  np.testing.assert_array_equal(again.split, rec.split)
  assert (other.split != rec.split).mean() > 0.2
  np.testing.assert_allclose(np.bincount(other.split) / 640, [0.5, 0.25, 0.25], atol=0.06)


@pytest.mark.real_data
def test_cowley_all_sessions_resized_grayscale(cowley_root, cowley_three):
  ds = readers.read_cowley_v4(cowley_root, image_size=(24, 32), grayscale=True)
  assert [r.name for r in ds.recordings] == readers.cowley_sessions(cowley_root)
  assert len(ds.recordings) == 10 and ds.image_shape == (24, 32, 1)
  assert ds["190925"].num_images == 1200 and ds["210305"].num_images == 400
  # Antialiased resizing keeps each image's mean luminance.
  full = cowley_three["210325"].images.astype(np.float64)
  luminance = full @ np.array([0.299, 0.587, 0.114])
  small = ds["210325"].images[..., 0].astype(np.float64)
  np.testing.assert_allclose(small.mean(axis=(1, 2)), luminance.mean(axis=(1, 2)), atol=3)


@pytest.mark.real_data
def test_allen_natural_scenes(real_data_dir):
  root = real_data_dir / "allen_v1_natural_scenes"
  ds = readers.read_allen_natural_scenes(root)
  rec = ds["allen_v1"]
  assert rec.images.shape == (118, 31, 31, 1) and rec.num_neurons == 212
  np.testing.assert_array_equal(np.bincount(rec.split, minlength=3), [100, 0, 18])
  np.testing.assert_array_equal(np.sort(rec.stimulus_ids), np.arange(118))
  scenes = np.load(root / "all_input_scenes_118_961.npy")
  np.testing.assert_array_equal(rec.images.reshape(118, -1), scenes[rec.stimulus_ids])
  outputs = np.concatenate([np.load(root / "Allen_train_output.npy"),
                            np.load(root / "Allen_test_output.npy")])
  np.testing.assert_allclose(rec.responses[:, 0, :], outputs, rtol=1e-6, atol=1e-4)
  assert rec.split[:100].max() == 0 and (rec.split[100:] == SPLITS.index("test")).all()


# ---------------------------------------------------------------------------------------
# Synthetic Cowley-format folders and their errors


def jpeg_bytes(rng, size=8):
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
  return buf.getvalue()


def make_cowley(root, session="1", num_images=5, num_neurons=3, raw=False, seed=0):
  """A Cowley-format folder with tiny random JPEGs; returns the response array."""
  rng = np.random.default_rng(seed)
  (root / "images").mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(root / "images" / f"images_{session}.zip", "w") as z:
    for i in reversed(range(num_images)):  # stored out of order on purpose
      z.writestr(f"images_{session}/image{i + 1:04d}.jpg", jpeg_bytes(rng))
  if raw:
    values = rng.poisson(3.0, (num_neurons, num_images, 4)).astype(np.float64)
    values[:, 0, 2:] = np.nan
    folder = root / "responses_raw"
  else:
    values = rng.random((num_neurons, num_images))
    folder = root / "responses_repeat_averaged"
  folder.mkdir(exist_ok=True)
  np.save(folder / f"responses_{session}.npy", values)
  return values


def test_cowley_synthetic_reads_raw_and_averaged(tmp_path):
  raw = make_cowley(tmp_path, "1", num_images=5, raw=True)
  averaged = make_cowley(tmp_path, "2", num_images=4, num_neurons=2, seed=1)
  ds = readers.load("cowley_v4", root=tmp_path)
  assert [r.name for r in ds.recordings] == ["1", "2"]
  np.testing.assert_array_equal(ds["1"].num_repeats, [2, 4, 4, 4, 4])
  np.testing.assert_allclose(ds["1"].mean_responses, np.nanmean(raw, axis=2).T, rtol=1e-6)
  np.testing.assert_allclose(ds["2"].responses[:, 0], averaged.T, rtol=1e-6)
  # Random images never coincide, so the two sessions share no ids.
  assert len(np.unique(np.concatenate([r.stimulus_ids for r in ds.recordings]))) == 9


def test_cowley_truncated_jpeg_names_zip_and_member(tmp_path):
  make_cowley(tmp_path, "1")
  path = tmp_path / "images" / "images_1.zip"
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist()}
  members["images_1/image0003.jpg"] = members["images_1/image0003.jpg"][:60]
  with zipfile.ZipFile(path, "w") as z:
    for n, data in members.items():
      z.writestr(n, data)
  with raises(path, "images_1/image0003.jpg", "cannot decode"):
    readers.read_cowley_v4(tmp_path)


def test_cowley_nan_in_averaged_responses_names_file(tmp_path):
  values = make_cowley(tmp_path, "1")
  values[1, 2] = np.nan
  path = tmp_path / "responses_repeat_averaged" / "responses_1.npy"
  np.save(path, values)
  with raises(path, "responses", "non-finite"):
    readers.read_cowley_v4(tmp_path)


def test_cowley_partial_nan_in_raw_names_file(tmp_path):
  values = make_cowley(tmp_path, "1", raw=True)
  values[0, 3, 1] = np.nan  # one neuron missing from a recorded repeat
  path = tmp_path / "responses_raw" / "responses_1.npy"
  np.save(path, values)
  with raises(path, "responses", "NaN in some but not all neurons"):
    readers.read_cowley_v4(tmp_path)


def test_cowley_count_mismatch(tmp_path):
  values = make_cowley(tmp_path, "1", num_images=5)
  path = tmp_path / "responses_repeat_averaged" / "responses_1.npy"
  np.save(path, values[:, :4])
  with raises("images_1.zip", "5 images", path, "4 image columns"):
    readers.read_cowley_v4(tmp_path)


def test_cowley_wrong_dtype_and_shape(tmp_path):
  make_cowley(tmp_path, "1")
  path = tmp_path / "responses_repeat_averaged" / "responses_1.npy"
  np.save(path, np.full((3, 5), "x"))
  with raises(path, "responses", "expected numbers"):
    readers.read_cowley_v4(tmp_path)
  np.save(path, np.zeros((3, 5, 2)))
  with raises(path, "responses", "(neurons, images)"):
    readers.read_cowley_v4(tmp_path)


def test_cowley_missing_and_empty(tmp_path):
  with raises(tmp_path / "images", "missing"):
    readers.read_cowley_v4(tmp_path)
  (tmp_path / "images").mkdir()
  with raises(tmp_path / "images", "no images_<session>.zip"):
    readers.read_cowley_v4(tmp_path)
  make_cowley(tmp_path, "1")
  (tmp_path / "responses_repeat_averaged" / "responses_1.npy").unlink()
  with raises("session 1", "responses file is missing", "responses_1.npy"):
    readers.read_cowley_v4(tmp_path)
  make_cowley(tmp_path, "1")
  (tmp_path / "images" / "images_1.zip").write_bytes(b"not a zip")
  with raises(tmp_path / "images" / "images_1.zip", "not a readable zip"):
    readers.read_cowley_v4(tmp_path)


def test_cowley_unknown_session_lists_available(tmp_path):
  make_cowley(tmp_path, "1")
  make_cowley(tmp_path, "2")
  with raises("unknown session(s) ['3']", "available: ['1', '2']"):
    readers.read_cowley_v4(tmp_path, ["1", "3"])


def test_cowley_bad_split_fractions(tmp_path):
  make_cowley(tmp_path, "1")
  with raises("split_fractions"):
    readers.read_cowley_v4(tmp_path, split_fractions=(0.9, 0.2, 0.1))


def test_hashed_split_depends_only_on_key_and_seed():
  keys = [bytes([i, j]) for i in range(40) for j in range(50)]
  split = readers.hashed_split(keys, (0.6, 0.3, 0.1), seed=3)
  np.testing.assert_allclose(np.bincount(split) / len(keys), [0.6, 0.3, 0.1], atol=0.03)
  np.testing.assert_array_equal(readers.hashed_split(keys[::7], (0.6, 0.3, 0.1), 3),
                                split[::7])
  assert (readers.hashed_split(keys, (0.6, 0.3, 0.1), seed=4) != split).any()


# ---------------------------------------------------------------------------------------
# Sensorium static folder format


def make_sensorium(folder, seed=0, num_neurons=5, withheld=False):
  """A Sensorium-format folder. Trials: 4 train, 2 validation, a test image shown 3
  times, a final_test image shown twice and 2 'none' trials, shuffled.

  Returns (tiers, frame_image_id, images (T, 1, H, W) float32, responses (T, K)).
  """
  rng = np.random.default_rng(seed)
  tiers = np.array(["train"] * 4 + ["validation"] * 2 + ["test"] * 3 + ["final_test"] * 2
                   + ["none"] * 2)
  ids = np.array([10, 11, 12, 13, 20, 21, 30, 30, 30, 40, 40, 50, 51])
  order = rng.permutation(len(tiers))
  tiers, ids = tiers[order], ids[order]
  pictures = {i: rng.integers(0, 256, (1, 6, 9)).astype(np.float32) for i in set(ids)}
  images = np.stack([pictures[i] for i in ids])
  responses = rng.random((len(ids), num_neurons)).astype(np.float32)
  if withheld:
    responses[tiers == "final_test"] = 0
  for sub in ("data/images", "data/responses", "data/behavior", "meta/trials",
              "meta/neurons"):
    (folder / sub).mkdir(parents=True, exist_ok=True)
  for t in range(len(ids)):
    np.save(folder / "data" / "images" / f"{t}.npy", images[t])
    np.save(folder / "data" / "responses" / f"{t}.npy", responses[t])
    np.save(folder / "data" / "behavior" / f"{t}.npy", rng.random(3))
  np.save(folder / "meta" / "trials" / "tiers.npy", tiers)
  np.save(folder / "meta" / "trials" / "frame_image_id.npy", ids)
  np.save(folder / "meta" / "neurons" / "cell_motor_coordinates.npy",
          rng.integers(-500, 500, (num_neurons, 3)))
  np.save(folder / "meta" / "neurons" / "unit_ids.npy", np.arange(num_neurons) + 1)
  return tiers, ids, images, responses


def test_sensorium_groups_repeats_and_maps_tiers(tmp_path):
  folder = tmp_path / "static1-2-3-GrayImageNet"
  tiers, ids, images, responses = make_sensorium(folder)
  ds = readers.read_sensorium(folder)
  rec = ds["static1-2-3-GrayImageNet"]
  assert rec.source == str(folder)
  np.testing.assert_array_equal(rec.stimulus_ids, [10, 11, 12, 13, 20, 21, 30, 40])
  assert rec.responses.shape == (8, 3, 5) and rec.images.shape == (8, 6, 9, 1)
  np.testing.assert_array_equal(rec.num_repeats, [1, 1, 1, 1, 1, 1, 3, 2])
  expected_split = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
  np.testing.assert_array_equal(rec.split, [SPLITS.index(s) for s in expected_split])
  for j, image_id in enumerate(rec.stimulus_ids):
    trials = np.flatnonzero(ids == image_id)
    np.testing.assert_allclose(rec.mean_responses[j], responses[trials].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(rec.images[j, ..., 0], images[trials[0], 0].astype(np.uint8))
  coords = np.load(folder / "meta" / "neurons" / "cell_motor_coordinates.npy")
  np.testing.assert_array_equal(rec.neuron_coords, coords.astype(np.float32))


def test_sensorium_two_folders_resized_and_withheld_tier_dropped(tmp_path):
  make_sensorium(tmp_path / "a")
  make_sensorium(tmp_path / "b", seed=1, num_neurons=7, withheld=True)
  ds = readers.load("sensorium", roots=[tmp_path / "a", tmp_path / "b"], image_size=4)
  assert ds.neuron_counts == (5, 7) and ds.image_shape == (4, 4, 1)
  assert 40 in ds["a"].stimulus_ids and 40 not in ds["b"].stimulus_ids


def test_sensorium_bad_inputs(tmp_path):
  folder = tmp_path / "s"
  make_sensorium(folder)
  trials = folder / "meta" / "trials"
  tiers = np.load(trials / "tiers.npy")

  np.save(trials / "tiers.npy", np.where(tiers == "none", "holdout", tiers))
  with raises(trials / "tiers.npy", "unknown split names ['holdout']"):
    readers.read_sensorium(folder)
  np.save(trials / "tiers.npy", tiers)

  t = int(np.flatnonzero(tiers == "train")[0])
  response = folder / "data" / "responses" / f"{t}.npy"
  good = np.load(response)
  np.save(response, np.where(np.arange(good.size) == 1, np.nan, good))
  with raises(response, "responses", "NaN/Inf"):
    readers.read_sensorium(folder)
  response.unlink()
  with raises(response, "responses", "missing"):
    readers.read_sensorium(folder)
  np.save(response, good)

  test_trials = np.flatnonzero(tiers == "test")
  image = folder / "data" / "images" / f"{test_trials[1]}.npy"
  picture = np.load(image)
  np.save(image, 255 - picture)
  with raises(image, "frame_image_id 30", "differs"):
    readers.read_sensorium(folder)
  np.save(image, picture)
  pictures = {f: np.load(f) for f in (folder / "data" / "images").iterdir()}
  for f, p in pictures.items():
    np.save(f, p / 255.0)
  with raises(folder / "data" / "images", "float images lie in [0, 1]"):
    readers.read_sensorium(folder)
  for f, p in pictures.items():
    np.save(f, p)

  units = folder / "meta" / "neurons" / "unit_ids.npy"
  np.save(units, np.array([1, 2, 2, 3, 4]))
  with raises(units, "unit_ids", "duplicate ids [2]"):
    readers.read_sensorium(folder)
  np.save(units, np.arange(5))
  coords = folder / "meta" / "neurons" / "cell_motor_coordinates.npy"
  np.save(coords, np.zeros((4, 3)))
  with raises(coords, "4 rows for 5 neurons"):
    readers.read_sensorium(folder)
  np.save(coords, np.zeros((5, 3)))
  assert readers.read_sensorium(folder)["s"].num_images == 8  # repaired files read again

  ids = trials / "frame_image_id.npy"
  np.save(ids, np.arange(3))
  with raises(ids, "3 entries", "13 trials"):
    readers.read_sensorium(folder)


def test_sensorium_missing_and_empty(tmp_path):
  with raises(tmp_path / "nowhere", "missing"):
    readers.read_sensorium(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with raises(tmp_path / "empty" / "meta" / "trials" / "tiers.npy", "missing"):
    readers.read_sensorium(tmp_path / "empty")
  make_sensorium(tmp_path / "s")
  for f in (tmp_path / "s" / "data" / "images").iterdir():
    f.unlink()
  with raises(tmp_path / "s" / "data" / "images", "empty folder"):
    readers.read_sensorium(tmp_path / "s")


# ---------------------------------------------------------------------------------------
# Generic npz format


def small_recording(name="mouse1", num_images=6, num_neurons=4, repeats=3, seed=0):
  rng = np.random.default_rng(seed)
  responses = rng.random((num_images, repeats, num_neurons)).astype(np.float32)
  responses[0, 1:] = np.nan
  return Recording(
      name=name, images=rng.integers(0, 256, (num_images, 5, 7, 3), dtype=np.uint8),
      responses=responses, neuron_coords=rng.random((num_neurons, 2)).astype(np.float32),
      split=rng.integers(0, 3, num_images).astype(np.int8),
      stimulus_ids=rng.permutation(100)[:num_images].astype(np.int64))


def test_npz_round_trip_is_exact_and_atomic(tmp_path):
  rec = small_recording()
  path = readers.write_npz(rec, tmp_path / "mouse1.npz")
  readers.write_npz(rec, path)  # overwriting in place works too
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mouse1.npz"]  # no temp files left
  other = small_recording(name="mouse2", num_neurons=3, seed=1)
  readers.write_npz(other, tmp_path / "two.npz", compress=False)
  ds = readers.load("npz", paths=[path, tmp_path / "two.npz"])
  assert [r.name for r in ds.recordings] == ["mouse1", "mouse2"]
  for original, read in zip((rec, other), ds.recordings):
    for field in ("images", "responses", "neuron_coords", "split", "stimulus_ids"):
      np.testing.assert_array_equal(getattr(read, field), getattr(original, field))
  assert ds["mouse1"].source == str(path)
  with np.load(path) as archive:
    assert archive["split"].dtype.kind == "U"  # names, readable without this library


def test_npz_minimal_fields_and_defaults(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.random((40, 4, 4))
  responses = rng.random((40, 3))
  np.savez(tmp_path / "plain.npz", images=images, responses=responses)
  rec = readers.read_npz(tmp_path / "plain.npz")["plain"]
  assert rec.images.shape == (40, 4, 4, 1) and rec.responses.shape == (40, 1, 3)
  np.testing.assert_array_equal(rec.images[..., 0], np.rint(images * 255).astype(np.uint8))
  np.testing.assert_array_equal(rec.stimulus_ids, np.arange(40))
  assert rec.neuron_coords.shape == (3, 0)
  np.testing.assert_array_equal(
      rec.split, readers.hashed_split([int(i).to_bytes(8, "little") for i in range(40)],
                                      (0.8, 0.1, 0.1), 0))
  np.savez(tmp_path / "named.npz", images=images, responses=responses,
           split=np.array(["train", "test"] * 20), name=np.array("m7"))
  rec = readers.read_npz(tmp_path / "named.npz")["m7"]
  np.testing.assert_array_equal(rec.split, [0, 2] * 20)


def npz_with(tmp_path, **changes):
  rec = small_recording()
  fields = dict(images=rec.images, responses=rec.responses, split=np.array(SPLITS)[rec.split],
                stimulus_ids=rec.stimulus_ids, name=np.array(rec.name))
  fields.update(changes)
  fields = {k: v for k, v in fields.items() if v is not None}
  path = tmp_path / "bad.npz"
  np.savez(path, **fields)
  return path


def test_npz_bad_inputs(tmp_path):
  rec = small_recording()
  cases = [
      (dict(stimulus_ids=np.array([1, 2, 2, 3, 4, 5])), ("stimulus_ids", "duplicate ids [2]")),
      (dict(images=rec.images.astype(np.int16)), ("images", "expected uint8", "int16")),
      (dict(images=rec.images / 100.0), ("images", "[0, 1]")),
      (dict(split=np.array(["train", "val", "test"] * 2)), ("split", "unknown split 'val'")),
      (dict(split=np.array([0, 1, 3, 0, 1, 2])), ("split", "0..2")),
      (dict(images=None), ("field 'images' is missing",)),
      (dict(respones=rec.responses), ("unknown fields ['respones']",)),
      (dict(responses=rec.responses[:5]), ("responses", "5 entries for 6 images")),
      (dict(responses=np.where(np.arange(4) == 2, np.nan, rec.responses[:, :1])),
       ("responses", "NaN in some but not all neurons")),
      (dict(responses=rec.responses[..., 0, 0]), ("responses", "(N, K) or (N, R, K)")),
      (dict(responses=np.full((6, 4), "1")), ("responses", "expected numbers")),
  ]
  for changes, message in cases:
    path = npz_with(tmp_path, **changes)
    with raises(path, *message):
      readers.read_npz(path)
  with raises(tmp_path / "absent.npz", "missing"):
    readers.read_npz(tmp_path / "absent.npz")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with raises(tmp_path / "junk.npz", "cannot read"):
    readers.read_npz(tmp_path / "junk.npz")
  with raises("no paths given"):
    readers.read_npz([])


def test_write_npz_replaces_only_archives_it_wrote(tmp_path):
  rec = small_recording()
  path = readers.write_npz(rec, tmp_path / "mine.npz")
  with np.load(path) as archive:
    assert int(archive[readers.NPZ_MARKER]) == readers.NPZ_FORMAT  # the mark it checks
  assert readers.read_npz(path)["mouse1"].num_images == 6  # the mark is no field
  np.savez(tmp_path / "theirs.npz", images=rec.images, responses=rec.responses)
  (tmp_path / "notes.txt").write_bytes(b"not an archive")
  (tmp_path / "folder.npz").mkdir()
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
  for name, found in (("theirs.npz", "a file of"), ("notes.txt", "a file of 14 bytes"),
                      ("folder.npz", "an empty folder")):
    with pytest.raises(RefusedPathError, match=re.escape(
        f"{tmp_path / name}: refusing to replace {found}")):
      readers.write_npz(rec, tmp_path / name)
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "folder.npz", "mine.npz", "notes.txt", "theirs.npz"]  # no temporary left


def test_read_npz_of_a_folder_says_it_is_a_folder(tmp_path):
  with raises(tmp_path, "is a folder; expected a .npz file (one per recording)"):
    readers.read_npz(tmp_path)
  readers.write_npz(small_recording(), tmp_path / "a.npz")
  with raises(tmp_path, "is a folder", "to read the 1 .npz files in it, pass them as a list"):
    readers.read_npz(tmp_path)
  with raises(tmp_path, "is a folder"):
    readers.read_npz([tmp_path / "a.npz", tmp_path])
  assert readers.read_npz([tmp_path / "a.npz"])["mouse1"].num_images == 6


def test_write_npz_missing_folder(tmp_path):
  with raises(tmp_path / "no_such_folder", "missing"):
    readers.write_npz(small_recording(), tmp_path / "no_such_folder" / "x.npz")


# ---------------------------------------------------------------------------------------
# Allen errors and the registry


def test_allen_bad_inputs(tmp_path):
  rng = np.random.default_rng(0)
  scenes = rng.integers(0, 256, (10, 16)).astype(np.float64)
  np.save(tmp_path / "Allen_train_input.npy", scenes[:7])
  np.save(tmp_path / "Allen_test_input.npy", scenes[7:])
  np.save(tmp_path / "Allen_train_output.npy", rng.random((7, 3)))
  np.save(tmp_path / "Allen_test_output.npy", rng.random((3, 3)))
  rec = readers.read_allen_natural_scenes(tmp_path)["allen_v1"]
  np.testing.assert_array_equal(rec.stimulus_ids, np.arange(10))  # positions: no scenes file
  np.save(tmp_path / "all_input_scenes_118_961.npy", scenes[::-1])
  rec = readers.read_allen_natural_scenes(tmp_path)["allen_v1"]
  np.testing.assert_array_equal(rec.stimulus_ids, np.arange(10)[::-1])  # rows of the file
  np.testing.assert_array_equal(rec.images.reshape(10, 16), scenes)

  np.save(tmp_path / "Allen_test_output.npy", rng.random((2, 3)))
  with raises("Allen_test_input.npy", "3 images", "Allen_test_output.npy", "2 rows"):
    readers.read_allen_natural_scenes(tmp_path)
  (tmp_path / "Allen_test_output.npy").unlink()
  with raises(tmp_path / "Allen_test_output.npy", "missing"):
    readers.read_allen_natural_scenes(tmp_path)
  np.save(tmp_path / "Allen_test_output.npy", rng.random((3, 3)))
  np.save(tmp_path / "Allen_train_input.npy", scenes[:7] * 2)
  with raises("images", "[0, 255]"):
    readers.read_allen_natural_scenes(tmp_path)


def test_load_registry(tmp_path, monkeypatch):
  assert set(readers.READERS) == {"simulator", "cowley_v4", "allen_natural_scenes",
                                  "sensorium", "npz", "nwb"}
  with raises("unknown dataset kind 'hdf5'", "choices", "cowley_v4", "nwb", "simulator"):
    readers.load("hdf5")
  calls = []
  expected = Dataset("sim", (small_recording(),))
  fake = types.ModuleType("jaxvna.data.simulator")
  fake.simulate = lambda **kw: calls.append(kw) or expected
  monkeypatch.setitem(sys.modules, "jaxvna.data.simulator", fake)
  assert readers.load("simulator", seed=3, num_subjects=1) is expected
  assert calls == [dict(seed=3, num_subjects=1)]


def test_npz_round_trip_keeps_image_features(tmp_path):
  rng = np.random.default_rng(0)
  rec = Recording(name="mine", images=rng.integers(0, 255, (6, 8, 8, 1), dtype=np.uint8),
                  responses=rng.poisson(2.0, (6, 1, 4)).astype(np.float32),
                  neuron_coords=np.zeros((4, 0), np.float32),
                  split=np.array([0, 0, 0, 0, 2, 2], np.int8),
                  stimulus_ids=np.arange(6, dtype=np.int64),
                  image_features=rng.normal(size=(6, 5)).astype(np.float32))
  readers.write_npz(rec, tmp_path / "mine.npz")
  back = readers.read_npz(tmp_path / "mine.npz").recordings[0]
  np.testing.assert_array_equal(back.image_features, rec.image_features)
