"""Readers that turn recordings on disk into the common `Dataset` structure.

Every reader returns a `jaxvna.data.dataset.Dataset` whose recordings name the file or
folder they came from in `Recording.source`; bad input raises `DataError` naming the
file, the field and what was expected.

Formats:
  cowley_v4             macaque V4 (Cowley et al. 2023): image zips + response arrays.
  allen_natural_scenes  mouse V1 (Allen Brain Observatory), 118 natural scenes at 31x31.
  sensorium             the Sensorium 2022 static folder format (one folder per mouse).
  npz                   a generic one-file-per-recording format for users' own data,
                        written by `write_npz` (see `read_npz` for the fields).
  simulator             `jaxvna.data.simulator.simulate` (ground-truth synthetic data).
  nwb                   NWB sessions (DANDI, Allen Brain Observatory): spike counts per
                        image presentation (`jaxvna.data.nwb.read_nwb`; needs pynwb).

`load(kind, **kwargs)` picks a reader by name from `READERS`.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pathlib
import re
import zipfile
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from jaxvna import files
from jaxvna.data.dataset import SPLITS, DataError, Dataset, Recording, split_index

PathLike = str | os.PathLike
ImageSize = int | tuple[int, int] | None

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------
# Shared helpers


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.exists():
    raise DataError(f"{path}: {what} folder is missing")
  if not path.is_dir():
    raise DataError(f"{path}: expected a folder ({what}), found a file")
  return path


def _load_npy(path: pathlib.Path, field: str) -> np.ndarray:
  """Loads one .npy file without pickle; missing or unreadable files raise DataError."""
  if path.is_dir():
    raise DataError(f"{path}: field '{field}': is a folder; expected a .npy file")
  if not path.is_file():
    raise DataError(f"{path}: field '{field}': file is missing")
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DataError(f"{path}: field '{field}': cannot read as a .npy array ({e})") from e


def _check_kind(array: np.ndarray, where: str, field: str, kinds: str, expected: str):
  if array.dtype.kind not in kinds:
    raise DataError(f"{where}: field '{field}': expected {expected}, got dtype {array.dtype}")


def _check_ndim(array: np.ndarray, where: str, field: str, ndims: Sequence[int],
                expected: str):
  if array.ndim not in ndims:
    raise DataError(f"{where}: field '{field}': expected shape {expected}, got {array.shape}")


def image_hw(image_size: ImageSize) -> tuple[int, int] | None:
  """`image_size` as (height, width): an int means a square."""
  if image_size is None:
    return None
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  if len(hw) != 2 or any(int(s) != s or s < 1 for s in hw):
    raise DataError(f"image_size: expected a positive int or (height, width), got {image_size!r}")
  return int(hw[0]), int(hw[1])


def resize_image(image: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
  """(H, W, C) uint8 resized to `hw` with PIL's antialiased Lanczos filter."""
  if hw is None or image.shape[:2] == hw:
    return image
  from PIL import Image
  pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
  out = np.asarray(pil.resize((hw[1], hw[0]), Image.Resampling.LANCZOS))
  return out.reshape(hw + (image.shape[2],))


def float_to_uint8(values: np.ndarray, where: str, field: str) -> np.ndarray:
  """Float grey levels on the 0-255 scale to uint8 (rounded); other ranges are errors."""
  if not np.isfinite(values).all():
    raise DataError(f"{where}: field '{field}': non-finite pixel values")
  lo, hi = float(values.min()), float(values.max())
  # Half a grey level of slack absorbs float rounding in stored 0-255 images.
  if lo < -0.5 or hi > 255.5:
    raise DataError(f"{where}: field '{field}': expected grey levels in [0, 255], got range "
                    f"[{lo:.3g}, {hi:.3g}] (standardised images must be un-normalised first)")
  return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
  """(train, validation, test) split fractions as floats; DataError unless 3, >= 0, sum 1."""
  f = tuple(float(x) for x in fractions)
  if len(f) != len(SPLITS) or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6:
    raise DataError(f"split_fractions: expected {len(SPLITS)} non-negative fractions for "
                    f"{SPLITS} summing to 1, got {tuple(fractions)!r}")
  return f  # type: ignore[return-value]


def hashed_split(keys: Sequence[bytes], fractions: Sequence[float], seed: int) -> np.ndarray:
  """(N,) int8 split indices from a seeded hash of each item's key.

  Each key is hashed with the seed to a number u in [0, 1); u < f_train gives train,
  u < f_train + f_validation gives validation, else test. Equal keys (the same image
  shown twice, or in two sessions) therefore always land in the same split, and the
  split of an item does not depend on which other items are read. Split sizes follow
  the fractions up to binomial noise.

  Args:
    keys: one byte string per item (e.g. a digest of the image file).
    fractions: (train, validation, test) fractions summing to 1.
    seed: changes the assignment.
  """
  f = check_fractions(fractions)
  salt = int(seed).to_bytes(8, "little", signed=True)
  u = np.array([int.from_bytes(hashlib.sha256(salt + k).digest()[:8], "little") / 2.0**64
                for k in keys], np.float64)
  edges = np.cumsum(f)[:-1]
  return np.searchsorted(edges, u, side="right").astype(np.int8)


def group_repeats(image_ids: np.ndarray, responses: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Presentations of one image as its repeats, in presentation order.

  Args:
    image_ids: (P,) the image of each presentation.
    responses: (P, K) the response to each presentation.

  Returns:
    (ids, grouped, inverse): (N,) the distinct images, sorted; (N, R, K) float32
    responses, R the most presentations of one image, NaN-padded; (P,) each
    presentation's index in `ids`.
  """
  ids, inverse, counts = np.unique(image_ids, return_inverse=True, return_counts=True)
  inverse = inverse.ravel()
  order = np.argsort(inverse, kind="stable")  # by image, presentation order within
  repeat = np.empty(len(inverse), np.int64)
  repeat[order] = np.arange(len(inverse)) - np.repeat(np.cumsum(counts) - counts, counts)
  grouped = np.full((ids.size, int(counts.max()), responses.shape[1]), np.nan, np.float32)
  grouped[inverse, repeat] = responses
  return ids, grouped, inverse


def natural_key(name: str) -> list:
  """Sort key that orders 'image2' before 'image10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def as_paths(paths: PathLike | Iterable[PathLike]) -> list[pathlib.Path]:
  """One path or several as a non-empty list of paths."""
  if isinstance(paths, (str, os.PathLike)):
    return [pathlib.Path(paths)]
  out = [pathlib.Path(p) for p in paths]
  if not out:
    raise DataError("no paths given")
  return out


# ---------------------------------------------------------------------------------------
# Cowley et al. 2023, macaque V4


def cowley_sessions(root: PathLike) -> list[str]:
  """Session ids with an image zip (`images/images_<session>.zip`) under `root`, sorted."""
  images_dir = _require_dir(pathlib.Path(root) / "images", "Cowley V4 images")
  sessions = sorted(p.name[len("images_"):-len(".zip")]
                    for p in images_dir.glob("images_*.zip") if p.is_file())
  if not sessions:
    raise DataError(f"{images_dir}: no images_<session>.zip files (empty folder?)")
  return sessions


def _zip_images(path: pathlib.Path, hw: tuple[int, int] | None, grayscale: bool
                ) -> tuple[np.ndarray, list[bytes]]:
  """Decodes the images of one zip in name order.

  Returns:
    images: (N, H, W, C) uint8, C = 1 if grayscale else 3.
    digests: N SHA-1 digests of the stored files (identify identical images).
  """
  from PIL import Image
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise DataError(f"{path}: not a readable zip file ({e})") from e
  with archive:
    # Members may sit in a sub-folder and be stored in any order; the response column
    # order is the numeric order of the file names.
    members = [m for m in archive.infolist()
               if not m.is_dir() and not m.filename.startswith("__MACOSX/")
               and not pathlib.PurePosixPath(m.filename).name.startswith(".")
               and m.filename.lower().endswith(_IMAGE_SUFFIXES)]
    if not members:
      raise DataError(f"{path}: no image files ({'/'.join(_IMAGE_SUFFIXES)}) in the zip")
    members.sort(key=lambda m: (natural_key(pathlib.PurePosixPath(m.filename).name),
                                m.filename))
    names = [m.filename for m in members]
    if len(set(names)) != len(names):
      raise DataError(f"{path}: duplicate member names in the zip")
    images, digests, shape = [], [], None
    for m in members:
      try:
        data = archive.read(m)
        with Image.open(io.BytesIO(data)) as pil:
          pil = pil.convert("L" if grayscale else "RGB")
      except Exception as e:  # PIL raises many types for corrupt files.
        raise DataError(f"{path}: member {m.filename!r}: cannot decode image ({e})") from e
      image = np.asarray(pil)
      image = image[..., None] if grayscale else image
      if hw is None:
        shape = shape or image.shape
        if image.shape != shape:
          raise DataError(f"{path}: member {m.filename!r}: image shape {image.shape} differs "
                          f"from the first image's {shape}; pass image_size to resize")
      images.append(resize_image(image, hw))
      digests.append(hashlib.sha1(data).digest())
  return np.stack(images), digests


def _cowley_responses(root: pathlib.Path, session: str) -> tuple[np.ndarray, pathlib.Path]:
  """(N, R, K) float32 responses of one session and the file they came from."""
  raw = root / "responses_raw" / f"responses_{session}.npy"
  averaged = root / "responses_repeat_averaged" / f"responses_{session}.npy"
  if raw.is_file():
    values = _load_npy(raw, "responses")
    _check_ndim(values, str(raw), "responses", (3,), "(neurons, images, repeats)")
    _check_kind(values, str(raw), "responses", "fiu", "numbers")
    return np.transpose(values, (1, 2, 0)).astype(np.float32), raw
  if not averaged.is_file():
    raise DataError(f"session {session}: responses file is missing: neither {raw} nor "
                    f"{averaged} exists")
  values = _load_npy(averaged, "responses")
  _check_ndim(values, str(averaged), "responses", (2,), "(neurons, images)")
  _check_kind(values, str(averaged), "responses", "fiu", "numbers")
  if values.dtype.kind == "f" and not np.isfinite(values).all():
    bad = np.argwhere(~np.isfinite(values))[0]
    raise DataError(f"{averaged}: field 'responses': {int((~np.isfinite(values)).sum())} "
                    f"non-finite values (first at neuron {bad[0]}, image {bad[1]}); "
                    "repeat-averaged responses must all be finite")
  return values.T[:, None, :].astype(np.float32), averaged


def read_cowley_v4(root: PathLike, sessions: Sequence[str] | str | None = None, *,
                   image_size: ImageSize = None, grayscale: bool = False,
                   split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                   split_seed: int = 0) -> Dataset:
  """Reads the Cowley et al. (2023) macaque V4 sessions, one Recording per session.

  Layout under `root`: `images/images_<session>.zip` (112x112 RGB JPEGs whose file-name
  order is the response column order), `responses_raw/responses_<session>.npy`
  (neurons x images x repeats, NaN-padded; used when present) else
  `responses_repeat_averaged/responses_<session>.npy` (neurons x images; read as R = 1).

  Splits are not part of the data. Each image gets a split from a seeded hash of its
  JPEG file (see `hashed_split`), so identical images (session 190925 shows images
  0-299 again as 900-1199; sessions 210322 and 210325 share 600 images) always fall in
  the same split and never leak between train and test.

  Stimulus ids are consecutive integers over the sessions read, in order of first
  appearance, keyed by (image file digest, occurrence within the session): an image
  shared by two sessions gets the same id in both, while a second showing of an image
  within one session gets its own id (ids must be unique within a recording).

  Args:
    root: the `cowley_v4` folder.
    sessions: session ids (e.g. "210325"), one id, or None for every session found.
    image_size: resize to this (int = square, or (height, width)) with PIL Lanczos.
    grayscale: convert images to one luminance channel.
    split_fractions: (train, validation, test) fractions.
    split_seed: seed of the split assignment.

  Returns:
    Dataset "cowley_v4"; recordings named by session id, `source` = responses file,
    neuron_coords (K, 0) (electrode positions are not in the files).
  """
  root = _require_dir(pathlib.Path(root), "Cowley V4 data")
  check_fractions(split_fractions)
  hw = image_hw(image_size)
  available = cowley_sessions(root)
  if sessions is None:
    sessions = available
  elif isinstance(sessions, (str, int)):
    sessions = [str(sessions)]
  sessions = [str(s) for s in sessions]
  unknown = [s for s in sessions if s not in available]
  if unknown:
    raise DataError(f"{root}: unknown session(s) {unknown}; available: {available}")

  ids: dict[tuple[bytes, int], int] = {}
  recordings = []
  for session in sessions:
    zip_path = root / "images" / f"images_{session}.zip"
    responses, responses_path = _cowley_responses(root, session)
    images, digests = _zip_images(zip_path, hw, grayscale)
    if images.shape[0] != responses.shape[0]:
      raise DataError(f"session {session}: image/response count mismatch: {zip_path} holds "
                      f"{images.shape[0]} images but {responses_path} has "
                      f"{responses.shape[0]} image columns")
    seen: dict[bytes, int] = {}
    stimulus_ids = np.empty(len(digests), np.int64)
    for i, d in enumerate(digests):
      occurrence = seen.get(d, 0)
      seen[d] = occurrence + 1
      stimulus_ids[i] = ids.setdefault((d, occurrence), len(ids))
    recordings.append(Recording(
        name=session, images=images, responses=responses,
        neuron_coords=np.zeros((responses.shape[2], 0), np.float32),
        split=hashed_split(digests, split_fractions, split_seed),
        stimulus_ids=stimulus_ids, source=str(responses_path)))
  return Dataset("cowley_v4", tuple(recordings))


# ---------------------------------------------------------------------------------------
# Allen Brain Observatory natural scenes, mouse V1 (31x31 downsampled)


def _allen_array(root: pathlib.Path, file: str, field: str, width: int | None) -> np.ndarray:
  path = root / file
  values = _load_npy(path, field)
  _check_ndim(values, str(path), field, (2,), "(images, values)")
  _check_kind(values, str(path), field, "fiu", "numbers")
  if width is not None and values.shape[1] != width:
    raise DataError(f"{path}: field '{field}': expected {width} columns, got {values.shape[1]}")
  return values


def read_allen_natural_scenes(root: PathLike) -> Dataset:
  """Reads the Allen natural-scenes V1 arrays as they lie: one Recording "allen_v1".

  Files under `root`: `Allen_{train,test}_input.npy` (images x 961, a 31x31 image
  vectorised row-major, grey levels 0-255), `Allen_{train,test}_output.npy` (images x
  neurons, trial-averaged responses, read as R = 1) and, optionally,
  `all_input_scenes_118_961.npy` (the 118 scenes in stimulus order).

  Images are the train rows then the test rows; the given 100/18 train/test split is
  kept (no validation images). Stimulus ids are the row of each image in
  `all_input_scenes_118_961.npy` (the natural-scene index 0..117) when every image
  matches exactly one row there; otherwise (file absent or rows differ) they are the
  positions 0..N-1.

  Returns:
    Dataset "allen_natural_scenes" with images (N, 31, 31, 1) uint8, `source` = root.
  """
  root = _require_dir(pathlib.Path(root), "Allen natural scenes data")
  parts = {}
  for split in ("train", "test"):
    images = _allen_array(root, f"Allen_{split}_input.npy", "images", None)
    responses = _allen_array(root, f"Allen_{split}_output.npy", "responses", None)
    if images.shape[0] != responses.shape[0]:
      raise DataError(f"{root}: image/response count mismatch: Allen_{split}_input.npy has "
                      f"{images.shape[0]} images, Allen_{split}_output.npy "
                      f"{responses.shape[0]} rows")
    parts[split] = (images, responses)
  pixels = parts["train"][0].shape[1]
  side = int(round(np.sqrt(pixels)))
  if side * side != pixels or parts["test"][0].shape[1] != pixels:
    raise DataError(f"{root}: field 'images': expected square vectorised images of equal size, "
                    f"got {parts['train'][0].shape[1]} and {parts['test'][0].shape[1]} values")
  if parts["train"][1].shape[1] != parts["test"][1].shape[1]:
    raise DataError(f"{root}: field 'responses': train has {parts['train'][1].shape[1]} "
                    f"neurons, test {parts['test'][1].shape[1]}")
  flat = np.concatenate([parts["train"][0], parts["test"][0]])
  responses = np.concatenate([parts["train"][1], parts["test"][1]]).astype(np.float32)
  split = np.repeat(np.array([split_index("train"), split_index("test")], np.int8),
                    [parts["train"][0].shape[0], parts["test"][0].shape[0]])

  stimulus_ids = np.arange(flat.shape[0], dtype=np.int64)
  scenes_path = root / "all_input_scenes_118_961.npy"
  if scenes_path.is_file():
    scenes = _allen_array(root, scenes_path.name, "images", pixels)
    matches = np.all(flat[:, None, :] == scenes[None, :, :], axis=2)
    if (matches.sum(axis=1) == 1).all() and len(np.unique(matches.argmax(1))) == len(flat):
      stimulus_ids = matches.argmax(axis=1).astype(np.int64)

  images = float_to_uint8(flat.astype(np.float64), str(root), "images")
  recording = Recording(
      name="allen_v1", images=images.reshape(-1, side, side, 1),
      responses=responses[:, None, :],
      neuron_coords=np.zeros((responses.shape[1], 0), np.float32),
      split=split, stimulus_ids=stimulus_ids, source=str(root))
  return Dataset("allen_natural_scenes", (recording,))


# ---------------------------------------------------------------------------------------
# Sensorium 2022 static folder format

# Tier names in tiers.npy -> split. "none" trials are dropped. The competition sets
# ("final_test") are scored like "test".
SENSORIUM_TIERS: Mapping[str, str | None] = {
    "train": "train", "validation": "validation", "test": "test", "final_test": "test",
    "none": None}


def _sensorium_image(path: pathlib.Path) -> np.ndarray:
  """One trial's image as (H, W, C) with C in {1, 3}, dtype as stored."""
  image = _load_npy(path, "images")
  if image.ndim == 2:
    image = image[None]
  if image.ndim != 3 or image.shape[0] not in (1, 3):
    raise DataError(f"{path}: field 'images': expected (1, H, W) or (3, H, W), "
                    f"got {image.shape}")
  _check_kind(image, str(path), "images", "fiu", "numbers")
  return np.moveaxis(image, 0, -1)


def _read_sensorium_folder(folder: pathlib.Path, hw: tuple[int, int] | None) -> Recording:
  _require_dir(folder, "Sensorium recording")
  trials_dir = folder / "meta" / "trials"
  tiers_path = trials_dir / "tiers.npy"
  tiers = _load_npy(tiers_path, "tiers")
  _check_kind(tiers, str(tiers_path), "tiers", "US", "strings")
  _check_ndim(tiers, str(tiers_path), "tiers", (1,), "(trials,)")
  tiers = tiers.astype(str)
  if tiers.size == 0:
    raise DataError(f"{tiers_path}: field 'tiers': no trials")
  unknown = sorted({str(t) for t in tiers} - set(SENSORIUM_TIERS))
  if unknown:
    raise DataError(f"{tiers_path}: field 'tiers': unknown split names {unknown}; "
                    f"expected {sorted(SENSORIUM_TIERS)}")
  ids_path = trials_dir / "frame_image_id.npy"
  frame_ids = _load_npy(ids_path, "frame_image_id")
  _check_ndim(frame_ids, str(ids_path), "frame_image_id", (1,), "(trials,)")
  _check_kind(frame_ids, str(ids_path), "frame_image_id", "iu", "integers")
  if frame_ids.shape != tiers.shape:
    raise DataError(f"{ids_path}: field 'frame_image_id': {frame_ids.size} entries for "
                    f"{tiers.size} trials in {tiers_path}")

  data_dir = _require_dir(folder / "data", "Sensorium data")
  for sub in ("images", "responses"):
    d = _require_dir(data_dir / sub, f"Sensorium {sub}")
    if not any(d.iterdir()):
      raise DataError(f"{d}: empty folder; expected one <trial>.npy per trial")

  trials = np.flatnonzero(tiers != "none")
  responses = []
  for t in trials:
    path = data_dir / "responses" / f"{t}.npy"
    r = _load_npy(path, "responses")
    _check_ndim(r, str(path), "responses", (1,), "(neurons,)")
    _check_kind(r, str(path), "responses", "fiu", "numbers")
    if responses and r.shape != responses[0].shape:
      raise DataError(f"{path}: field 'responses': {r.size} neurons, but trial {trials[0]} "
                      f"has {responses[0].size}")
    if not np.isfinite(r).all():
      raise DataError(f"{path}: field 'responses': {int((~np.isfinite(r)).sum())} NaN/Inf "
                      "values; every neuron's response is expected")
    responses.append(r.astype(np.float32))
  if not responses:
    raise DataError(f"{tiers_path}: field 'tiers': every trial is 'none'; nothing to read")
  responses = np.stack(responses)

  # Competition releases keep withheld responses as zeros: a tier whose responses are
  # all zero carries no data, so its trials are dropped rather than scored as silence.
  keep = np.ones(len(trials), bool)
  for tier in set(tiers[trials]):
    in_tier = tiers[trials] == tier
    if not responses[in_tier].any():
      keep &= ~in_tier
  if not keep.any():
    raise DataError(f"{folder}: field 'responses': all responses are zero (withheld)")
  trials, responses = trials[keep], responses[keep]

  # Repeated presentations of one image become repeats of that image (sorted by id).
  image_ids, grouped, inverse = group_repeats(frame_ids[trials], responses)
  first = np.full(len(image_ids), len(trials))  # each image's first trial, for messages
  np.minimum.at(first, inverse, np.arange(len(trials)))
  num_images, num_neurons = len(image_ids), responses.shape[1]
  split = np.empty(num_images, np.int8)
  images: list[np.ndarray | None] = [None] * num_images
  image_max = 0.0
  for t, i in zip(trials, inverse):
    tier_split = split_index(SENSORIUM_TIERS[tiers[t]], source=str(tiers_path))
    path = data_dir / "images" / f"{t}.npy"
    image = _sensorium_image(path)
    if image.dtype != np.uint8:
      image_max = max(image_max, float(np.max(image)))
      image = float_to_uint8(image, str(path), "images")
    image = resize_image(image, hw)
    if images[i] is None:
      images[i], split[i] = image, tier_split
      continue
    if split[i] != tier_split:
      raise DataError(f"{tiers_path}: field 'tiers': image {image_ids[i]} is shown in trials "
                      f"of tiers {SPLITS[split[i]]!r} and {SPLITS[tier_split]!r}")
    if not np.array_equal(images[i], image):
      raise DataError(f"{path}: field 'images': trial {t} has frame_image_id {image_ids[i]} "
                      f"but its image differs from trial {trials[first[i]]}'s")
  if 0.0 < image_max <= 1.0:
    raise DataError(f"{data_dir / 'images'}: field 'images': float images lie in [0, 1]; "
                    "expected grey levels 0-255")
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise DataError(f"{data_dir / 'images'}: field 'images': trials have different image "
                    f"shapes {sorted(shapes)}; pass image_size to resize")

  neurons_dir = folder / "meta" / "neurons"
  coords_path = neurons_dir / "cell_motor_coordinates.npy"
  coords = np.zeros((num_neurons, 0), np.float32)
  if coords_path.is_file():
    coords = _load_npy(coords_path, "cell_motor_coordinates")
    _check_ndim(coords, str(coords_path), "cell_motor_coordinates", (2,), "(neurons, 3)")
    _check_kind(coords, str(coords_path), "cell_motor_coordinates", "fiu", "numbers")
    if coords.shape[0] != num_neurons:
      raise DataError(f"{coords_path}: field 'cell_motor_coordinates': {coords.shape[0]} rows "
                      f"for {num_neurons} neurons in data/responses")
    coords = coords.astype(np.float32)
  units_path = neurons_dir / "unit_ids.npy"
  if units_path.is_file():
    units = _load_npy(units_path, "unit_ids")
    _check_ndim(units, str(units_path), "unit_ids", (1,), "(neurons,)")
    if units.shape[0] != num_neurons:
      raise DataError(f"{units_path}: field 'unit_ids': {units.shape[0]} ids for "
                      f"{num_neurons} neurons in data/responses")
    uniq, n = np.unique(units, return_counts=True)
    if (n > 1).any():
      raise DataError(f"{units_path}: field 'unit_ids': duplicate ids {uniq[n > 1][:5].tolist()}")

  return Recording(
      name=folder.name, images=np.stack(images), responses=grouped, neuron_coords=coords,
      split=split, stimulus_ids=image_ids.astype(np.int64), source=str(folder))


def read_sensorium(roots: PathLike | Iterable[PathLike], *,
                   image_size: ImageSize = None) -> Dataset:
  """Reads Sensorium 2022 static recordings, one Recording per (unzipped) folder.

  Folder layout (trial t = 0..T-1 indexes every meta/trials array):
    data/images/<t>.npy                      (1, H, W) grey image, 0-255 (float or uint8)
    data/responses/<t>.npy                   (K,) responses of the K neurons
    meta/trials/tiers.npy                    (T,) "train" | "validation" | "test" |
                                             "final_test" | "none"
    meta/trials/frame_image_id.npy           (T,) image id of each trial
    meta/neurons/cell_motor_coordinates.npy  (K, 3) neuron positions (optional)
    meta/neurons/unit_ids.npy                (K,) unique neuron ids (optional; checked)

  Trials of tier "none" are dropped; "final_test" becomes "test". A tier whose responses
  are all exactly zero (withheld in the competition releases) is dropped too. Trials
  showing the same frame_image_id become repeats of one image (N images sorted by id,
  R = the most presentations, fewer are NaN-padded); they must show the same pixels and
  belong to one tier. Float images are rounded to uint8 grey levels (values must lie in
  [0, 255]). Stimulus ids are the frame_image_ids, so images shared between mice keep
  one id. Behaviour and pupil position are not read (a Recording has no field for them).

  Args:
    roots: one folder or several.
    image_size: resize to this (int = square, or (height, width)) with PIL Lanczos.

  Returns:
    Dataset "sensorium"; recordings named by folder name, `source` = folder.
  """
  hw = image_hw(image_size)
  return Dataset("sensorium", tuple(_read_sensorium_folder(p, hw) for p in as_paths(roots)))


# ---------------------------------------------------------------------------------------
# Generic .npz format

NPZ_FIELDS = ("images", "responses", "neuron_coords", "split", "stimulus_ids", "name",
              "image_features")
# A 0-d int array that `write_npz` adds and `read_npz` skips: it marks the archives that
# `write_npz` may replace.
NPZ_MARKER = "jaxvna_format"
NPZ_FORMAT = 1


def _read_npz_file(path: pathlib.Path, fractions: Sequence[float], seed: int) -> Recording:
  where = str(path)
  if path.is_dir():
    found = len(list(path.glob("*.npz")))
    hint = f"; to read the {found} .npz files in it, pass them as a list" if found else ""
    raise DataError(f"{where}: is a folder; expected a .npz file (one per recording){hint}")
  if not path.is_file():
    raise DataError(f"{where}: file is missing")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {k: archive[k] for k in archive.files if k != NPZ_MARKER}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{where}: cannot read as an .npz archive without pickle ({e})") from e
  unknown = sorted(set(arrays) - set(NPZ_FIELDS))
  if unknown:
    raise DataError(f"{where}: unknown fields {unknown}; expected some of {NPZ_FIELDS}")
  for field in ("images", "responses"):
    if field not in arrays:
      raise DataError(f"{where}: field '{field}' is missing")

  images = arrays["images"]
  _check_ndim(images, where, "images", (3, 4), "(N, H, W) or (N, H, W, C)")
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype.kind == "f":
    if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
      raise DataError(f"{where}: field 'images': float images must lie in [0, 1] "
                      "(or store uint8 0-255)")
    images = np.rint(images * 255.0).astype(np.uint8)
  elif images.dtype != np.uint8:
    raise DataError(f"{where}: field 'images': expected uint8 or float in [0, 1], "
                    f"got dtype {images.dtype}")

  responses = arrays["responses"]
  _check_ndim(responses, where, "responses", (2, 3), "(N, K) or (N, R, K)")
  _check_kind(responses, where, "responses", "fiu", "numbers")
  responses = (responses[:, None, :] if responses.ndim == 2 else responses).astype(np.float32)
  num_neurons = responses.shape[2]

  coords = arrays.get("neuron_coords", np.zeros((num_neurons, 0), np.float32))
  _check_ndim(coords, where, "neuron_coords", (2,), "(K, D)")
  _check_kind(coords, where, "neuron_coords", "fiu", "numbers")

  stimulus_ids = arrays.get("stimulus_ids", np.arange(images.shape[0], dtype=np.int64))
  _check_ndim(stimulus_ids, where, "stimulus_ids", (1,), "(N,)")
  _check_kind(stimulus_ids, where, "stimulus_ids", "iu", "integers")
  stimulus_ids = stimulus_ids.astype(np.int64)

  if "split" in arrays:
    split = arrays["split"]
    _check_ndim(split, where, "split", (1,), "(N,)")
    _check_kind(split, where, "split", "iuUS", f"split names {SPLITS} or their indices")
    if split.dtype.kind in "US":
      split = np.array([split_index(s, source=f"{where}: field 'split'")
                        for s in split.astype(str).tolist()], np.int8)
    elif split.size and (split.min() < 0 or split.max() >= len(SPLITS)):
      raise DataError(f"{where}: field 'split': indices must lie in 0..{len(SPLITS) - 1} "
                      f"{SPLITS}, got range [{split.min()}, {split.max()}]")
    split = split.astype(np.int8)
  else:
    split = hashed_split([int(i).to_bytes(8, "little", signed=True) for i in stimulus_ids],
                         fractions, seed)

  name = path.stem
  if "name" in arrays:
    if arrays["name"].dtype.kind not in "US" or arrays["name"].ndim != 0:
      raise DataError(f"{where}: field 'name': expected a string, got {arrays['name'].dtype} "
                      f"of shape {arrays['name'].shape}")
    name = str(arrays["name"])
  features = arrays.get("image_features")
  if features is not None:
    _check_ndim(features, where, "image_features", (2,), "(N, F)")
    _check_kind(features, where, "image_features", "fiu", "numbers")
    features = features.astype(np.float32)
  return Recording(name=name, images=images, responses=responses,
                   neuron_coords=coords.astype(np.float32), split=split,
                   stimulus_ids=stimulus_ids, source=where, image_features=features)


def read_npz(paths: PathLike | Iterable[PathLike], *,
             split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
             split_seed: int = 0) -> Dataset:
  """Reads the generic format: one .npz file per recording (as `write_npz` writes it).

  Fields of each file (loaded without pickle; any other field is an error):
    images        (N, H, W) or (N, H, W, C) uint8 grey levels 0-255, or float in [0, 1]
                  (multiplied by 255 and rounded).
    responses     (N, K) or (N, R, K) numbers; NaN only pads whole unrecorded repeats.
    neuron_coords (K, D) numbers, optional (default (K, 0): unknown).
    split         (N,) names from SPLITS ("train", "validation", "test") or their
                  indices 0..2; optional: default is `hashed_split` of the stimulus ids
                  with `split_fractions` and `split_seed`.
    stimulus_ids  (N,) unique integers, optional (default 0..N-1); equal ids in two
                  files of one dataset mean the same image.
    name          0-d string, optional (default: the file name without suffix).
    image_features (N, F) numbers, optional: precomputed features of each image (e.g. of
                  a frozen pretrained network) for the `features` image tower.
    jaxvna_format written by `write_npz` to mark its archives; ignored.

  Args:
    paths: one .npz file, or several (a folder is refused: list its files).

  Returns:
    Dataset "npz" with one recording per file, `source` = the file.
  """
  check_fractions(split_fractions)
  return Dataset("npz", tuple(_read_npz_file(p, split_fractions, split_seed)
                              for p in as_paths(paths)))


def written_by_write_npz(path: pathlib.Path) -> bool:
  """Whether `path` is an archive that `write_npz` wrote (it holds the NPZ_MARKER entry)."""
  try:
    with zipfile.ZipFile(path) as archive:
      return f"{NPZ_MARKER}.npy" in archive.namelist()
  except (zipfile.BadZipFile, OSError):
    return False


def write_npz(recording: Recording, path: PathLike, *, compress: bool = True) -> pathlib.Path:
  """Writes one recording in the `read_npz` format, atomically.

  The archive goes to a temporary file in the destination folder, is flushed and
  fsynced, then renamed over `path`: readers never see a half-written file. Split is
  stored by name; `truth` and `source` are not stored. The archive also holds a
  `jaxvna_format` entry (NPZ_MARKER, which `read_npz` skips): an existing file at `path`
  is replaced only if it has one.

  Returns:
    The path written.

  Raises:
    DataError: the folder of `path` is missing.
    RefusedPathError: `path` is a folder, or a file that `write_npz` did not write.
  """
  path = pathlib.Path(path)
  folder = path.parent
  if not folder.is_dir():
    raise DataError(f"{folder}: folder to write {path.name} into is missing")
  arrays = dict(
      images=recording.images, responses=recording.responses.astype(np.float32),
      neuron_coords=recording.neuron_coords.astype(np.float32),
      split=np.array(SPLITS)[recording.split], stimulus_ids=recording.stimulus_ids,
      name=np.array(recording.name))
  if recording.image_features is not None:
    arrays["image_features"] = recording.image_features.astype(np.float32)
  arrays[NPZ_MARKER] = np.array(NPZ_FORMAT)
  save = np.savez_compressed if compress else np.savez
  return files.atomic_write(path, lambda f: save(f, **arrays), "wb",
                            is_ours=written_by_write_npz,
                            what="an .npz archive written by jaxvna's write_npz")


# ---------------------------------------------------------------------------------------
# Registry


def _simulate(**kwargs) -> Dataset:
  # Imported on use: the simulator pulls in heavier dependencies than the readers.
  return importlib.import_module("jaxvna.data.simulator").simulate(**kwargs)


def _nwb(**kwargs) -> Dataset:
  # Imported on use: NWB needs pynwb (an optional extra), which importing jaxvna must not.
  return importlib.import_module("jaxvna.data.nwb").read_nwb(**kwargs)


READERS: Mapping[str, Callable[..., Dataset]] = {
    "simulator": _simulate,
    "cowley_v4": read_cowley_v4,
    "allen_natural_scenes": read_allen_natural_scenes,
    "sensorium": read_sensorium,
    "npz": read_npz,
    "nwb": _nwb,
}


def load(kind: str, **kwargs) -> Dataset:
  """Reads a dataset with the reader registered under `kind` in `READERS`."""
  if kind not in READERS:
    raise DataError(f"unknown dataset kind {kind!r}; choices: {sorted(READERS)}")
  return READERS[kind](**kwargs)
