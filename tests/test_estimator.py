"""`jaxvna.VNA`: fit on arrays, embeddings, identification score, save/load, clear errors,
and a light `import jaxvna`."""

import copy
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxvna
from jaxvna.data import readers
from jaxvna.data.dataset import DataError
from jaxvna.errors import RefusedPathError
from jaxvna.estimator import arrays_to_dataset

TINY_DATA = dict(seed=0, num_subjects=2, num_images=600, image_size=32,
                 neurons_per_subject=(60, 40), spatial_frequency_range=(2.0, 8.0))
TINY_MODEL = {"model.neural_tower.readin_dim": 32, "model.neural_tower.hidden": (64,),
              "model.image_tower.hidden": (128,), "optim.lr": 3e-3, "optim.warmup_steps": 5}


@pytest.fixture(scope="module")
def arrays():
  """{split: (per-subject images, per-subject responses)} of a tiny simulation."""
  dataset = readers.load("simulator", **TINY_DATA)
  out = {}
  for split in ("train", "test"):
    idx = [r.indices(split) for r in dataset.recordings]
    out[split] = ([r.images[i] for r, i in zip(dataset.recordings, idx)],
                  [r.responses[i] for r, i in zip(dataset.recordings, idx)])
  return out


@pytest.fixture(scope="module")
def fitted(arrays):
  images, responses = arrays["train"]
  return jaxvna.VNA(steps=100, batch_size=64, embed_dim=32, image_tower="mlp",
                    **TINY_MODEL).fit(images, responses, subject_ids=["m1", "m2"])


def test_fit_scores_well_above_chance(fitted, arrays):
  images, responses = arrays["test"]
  for s in range(2):
    for task in ("decoding", "encoding"):
      # Chance: 0.1 (10-way), 0.5 (2-way); 100 steps on 2 x 384 images is a short fit.
      # Measured (seed 0; subject 0 decoding/encoding, subject 1 decoding/encoding):
      # 10-way 0.296/0.266, 0.353/0.330; 2-way 0.735/0.748, 0.758/0.768. Floors: the
      # lowest minus 0.036 (10-way) and 0.045 (2-way), ~20% of its distance from chance.
      assert fitted.score(images[s], responses[s], subject=s, task=task) > 0.23
      assert fitted.score(images[s], responses[s], subject=s, task=task, n_way=2) > 0.69
  assert fitted.score(images[1], responses[1], subject="m2") == fitted.score(
      images[1], responses[1], subject=1)


def test_transform_shapes_and_unit_norms(fitted, arrays):
  images, responses = arrays["test"]
  z_img = fitted.transform_images(images[0])
  z_neu = fitted.transform_responses(responses[1], subject="m2")
  assert z_img.shape == (len(images[0]), 32) and z_neu.shape == (len(images[1]), 32)
  np.testing.assert_allclose(np.linalg.norm(z_img, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(z_neu, axis=1), 1.0, atol=1e-5)
  # Float images in [0, 1] and (N, H, W) images are the same images.
  np.testing.assert_array_equal(fitted.transform_images(images[0][..., 0] / 255.0), z_img)
  # (N, K) responses are taken as trial averages of (N, R, K) ones.
  mean = np.nanmean(responses[1], axis=1)
  np.testing.assert_allclose(fitted.transform_responses(mean, subject=1), z_neu, atol=1e-6)


def test_save_load_round_trip_gives_identical_embeddings(fitted, arrays, tmp_path):
  images, responses = arrays["test"]
  fitted.save(tmp_path / "model")
  fitted.save(tmp_path / "model")  # replacing a saved model
  loaded = jaxvna.VNA.load(tmp_path / "model")
  assert loaded.neuron_counts_ == (60, 40) and loaded.subject_ids_ == ["m1", "m2"]
  np.testing.assert_array_equal(loaded.transform_images(images[0]),
                                fitted.transform_images(images[0]))
  np.testing.assert_array_equal(loaded.transform_responses(responses[1], subject="m2"),
                                fitted.transform_responses(responses[1], subject="m2"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left


def test_load_completes_a_model_saved_before_every_model_field_was_written(fitted, arrays,
                                                                           tmp_path):
  # Such a model.json lists only the model fields its config set; the rest were defaults.
  images, _ = arrays["test"]
  fitted.save(tmp_path / "model")
  meta = json.loads((tmp_path / "model" / "model.json").read_text())
  model = meta["config"]["model"]
  for key in ("init_bias", "decoder_size"):
    del model[key]
  model["image_tower"] = {"type": "mlp", "channels": [8, 16], "front_end": None,
                          "hidden": model["image_tower"]["hidden"]}
  del model["neural_tower"]["activation"]
  (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
  loaded = jaxvna.VNA.load(tmp_path / "model")
  np.testing.assert_array_equal(loaded.transform_images(images[0]),
                                fitted.transform_images(images[0]))


def snapshot(folder):
  """{relative path: bytes (None for a folder)} of everything under `folder`."""
  return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
          for p in sorted(folder.rglob("*"))}


def test_save_refuses_a_path_it_did_not_write_and_leaves_it_as_it_was(fitted, tmp_path):
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "paper.tex").write_bytes(b"\\section{Results}")
  np.save(notes / "data.npy", np.arange(5))
  (tmp_path / "model.bin").write_bytes(b"a file")
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "model.json").write_text('{"model": "resnet"}')
  fitted.save(tmp_path / "ours")
  (tmp_path / "ours" / "README.txt").write_text("my notes")  # a model plus a user's file
  before = snapshot(tmp_path)
  cases = (("notes", "a folder holding 2 entries (data.npy, paper.tex) (not a model's: "
                     "data.npy, paper.tex)"),
           ("model.bin", "a file of 6 bytes"),
           ("foreign", "a folder holding 1 entry (model.json) (model.json is not one that "
                       "VNA.save writes)"),
           ("ours", "a folder holding 3 entries (README.txt, model.json, params) (not a "
                    "model's: README.txt)"))
  for name, found in cases:
    with pytest.raises(RefusedPathError, match=re.escape(
        f"{tmp_path / name}: refusing to replace {found}: it is not a saved jaxvna model")):
      fitted.save(tmp_path / name)
  assert snapshot(tmp_path) == before  # nothing deleted, renamed or left behind


def test_save_replaces_its_own_model_and_writes_into_an_empty_folder(fitted, tmp_path):
  import jax
  other = copy.copy(fitted)
  other.params_ = jax.tree.map(lambda x: -x, fitted.params_)
  other.subject_ids_ = ["a", "b"]
  fitted.save(tmp_path / "model")
  other.save(tmp_path / "model")
  loaded = jaxvna.VNA.load(tmp_path / "model")
  assert loaded.subject_ids_ == ["a", "b"]
  jax.tree.map(np.testing.assert_array_equal, loaded.params_, other.params_)
  # A model.json of a save before its "format" field is jaxvna's too.
  meta_path = tmp_path / "model" / "model.json"
  meta = json.loads(meta_path.read_text())
  assert meta.pop("format") == "jaxvna.VNA"
  meta_path.write_text(json.dumps(meta))
  fitted.save(tmp_path / "model")
  assert jaxvna.VNA.load(tmp_path / "model").subject_ids_ == ["m1", "m2"]
  (tmp_path / "empty").mkdir()
  fitted.save(tmp_path / "empty")
  assert jaxvna.VNA.load(tmp_path / "empty").subject_ids_ == ["m1", "m2"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]
  assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "params"]


def test_load_names_a_corrupt_or_incomplete_model_json(fitted, tmp_path):
  fitted.save(tmp_path / "m")
  meta_path = tmp_path / "m" / "model.json"
  meta = json.loads(meta_path.read_text())
  where = re.escape(str(meta_path))
  meta_path.write_text(json.dumps(meta)[:-30])  # cut short
  with pytest.raises(DataError, match=rf"{where}: cannot read as JSON \(.*\); expected the "
                                      "model.json that VNA.save writes"):
    jaxvna.VNA.load(tmp_path / "m")
  meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "image_shape"}))
  with pytest.raises(DataError, match=rf"{where}: missing fields \['image_shape'\]"):
    jaxvna.VNA.load(tmp_path / "m")
  meta_path.write_text("[1, 2]")
  with pytest.raises(DataError, match=rf"{where}: holds a JSON list"):
    jaxvna.VNA.load(tmp_path / "m")


def test_transform_responses_refuses_nan_inside_a_repeat_and_infinite_values(fitted, arrays):
  images, responses = arrays["test"]
  n = len(responses[1])
  partly = responses[1].copy()
  partly[[4, 9], 2, 5] = np.nan  # one neuron of a recorded repeat
  message = rf"responses: rows 4, 9 \(2 of {n} images\) have NaN in some but not all neurons"
  with pytest.raises(DataError, match=message):
    fitted.transform_responses(partly, subject=1)
  with pytest.raises(DataError, match=message):
    fitted.score(images[1], partly, subject=1)
  infinite = responses[1].copy()
  infinite[7, 0, 0], infinite[3, 9, 1] = np.inf, -np.inf
  with pytest.raises(DataError, match=rf"rows 3, 7 \(2 of {n} images\) have infinite values"):
    fitted.score(images[1], infinite, subject=1)
  everywhere = responses[1].copy()
  everywhere[:, 0, 0] = np.nan
  with pytest.raises(DataError, match=rf"rows 0, 1, 2, 3, 4, ... \({n} of {n} images\)"):
    fitted.transform_responses(everywhere, subject=1)
  # Whole unrecorded repeats are averaged out; an image needs one recorded repeat.
  unrecorded = responses[1].copy()
  unrecorded[4, 2:] = np.nan
  unrecorded[:, 9] = np.nan
  z = fitted.transform_responses(unrecorded, subject=1)
  assert np.isfinite(z).all()
  np.testing.assert_allclose(
      z, fitted.transform_responses(np.nanmean(unrecorded, axis=1), subject=1), atol=1e-6)
  unrecorded[5] = np.nan
  with pytest.raises(DataError, match=rf"rows 5 \(1 of {n} images\) have no recorded repeat"):
    fitted.transform_responses(unrecorded, subject=1)


def test_bad_shapes_raise_clear_errors(fitted, arrays):
  images, responses = arrays["train"]
  with pytest.raises(ValueError, match=r"responses\[1\]: 10 rows for 384 images"):
    arrays_to_dataset(images, [responses[0], responses[1][:10]])
  with pytest.raises(ValueError, match=r"responses: expected responses of shape \(N, K\)"):
    arrays_to_dataset(images[0], responses[0][:, 0, 0])
  with pytest.raises(ValueError, match="lists of one array per subject"):
    arrays_to_dataset(images, responses[0])
  with pytest.raises(ValueError, match=r"images\[1\]: image shape \(16, 32, 1\) differs"):
    arrays_to_dataset([images[0], images[1][:, :16]], responses)
  with pytest.raises(ValueError, match=r"float images must be finite and in \[0, 1\]"):
    arrays_to_dataset(images[0] * 1.0, responses[0])
  with pytest.raises(ValueError, match="images: expected images of shape"):
    fitted.transform_images(images[0][0])
  with pytest.raises(ValueError, match=r"expected images of shape \(32, 32, 1\) \(as in fit\)"):
    fitted.transform_images(images[0][:, :16])
  with pytest.raises(ValueError, match="subject 'm1' has 60 neurons"):
    fitted.transform_responses(responses[1], subject="m1")
  with pytest.raises(ValueError, match="subject: unknown 'm3'"):
    fitted.transform_responses(responses[1], subject="m3")
  with pytest.raises(TypeError, match="unknown config field 'optim.learning_rate'"):
    jaxvna.VNA(optim__learning_rate=1e-3)
  with pytest.raises(RuntimeError, match=r"call fit\(\)"):
    jaxvna.VNA().transform_images(images[0])


def test_split_keeps_test_images_out_of_training(arrays):
  images, responses = arrays["train"]
  split = [np.where(np.arange(len(x)) < 300, "train", "test") for x in images]
  dataset = arrays_to_dataset(images, responses, split=split)
  assert [len(r.indices("train")) for r in dataset.recordings] == [300, 300]
  assert [r.name for r in dataset.recordings] == ["0", "1"]
  with pytest.raises(ValueError, match="have no 'train' images"):
    jaxvna.VNA().fit(images, responses, split=[np.full(len(x), "test") for x in images])


def test_import_jaxvna_does_not_import_jax():
  code = ("import sys, jaxvna; assert 'jax' not in sys.modules, 'jax imported'; "
          "assert jaxvna.VNA.__name__ == 'VNA'")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
