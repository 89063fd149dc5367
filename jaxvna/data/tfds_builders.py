"""TFDS builders that store a `Dataset` as ArrayRecord files, and readers of those files.

No TensorFlow: features are `tfds.features.Tensor`s only (images as uint8 tensors), the
files are written with `file_format="array_record"` and read with `as_data_source`.

A prepared dataset lives in `data_dir/<builder name>/<config>/<version>/`:
  <name>-<split>.array_record-*   one record per (recording, image), the record format of
                                  `jaxvna.data.pipeline` ("image", "responses" NaN-padded
                                  to (R_max, K_max), "subject", "stimulus_id",
                                  "num_neurons", and "image_features" (F,) float32 when
                                  the dataset has them); splits without images are left
                                  out
  dataset_info.json, features.json  TFDS's own description
  jaxvna_arrays.npz                 per recording: neuron_coords, split, stimulus_ids, truth
  jaxvna_metadata.json              names, neuron counts, sources, shapes, feature
                                    dimension; written last and the mark of a complete
                                    preparation

Records are written in key order (`disable_shuffling`): recordings in dataset order,
images in stored order, so a record's position is known from the metadata; each record
still carries its subject and stimulus id, and readers check them.

Atomic preparation. TFDS alone already writes into an `incomplete.*` sibling folder that
it renames on success and deletes on an exception, but it takes any existing version
folder as complete and, when overwriting, deletes the old copy before building the new.
`prepare` therefore builds in a private `.incomplete-*` folder, renames the finished
version folder into place (moving an old copy aside only then), and readers require the
metadata file. A process killed outright can leave a `.incomplete-*` folder behind; it is
never read and may be deleted. Only a version folder holding nothing but the files above
(a copy, complete or not) is ever replaced: `prepare` refuses any other.

Builders (TFDS names): jaxvna_simulator, cowley_v4, allen_natural_scenes, sensorium2022
(manual download) and jaxvna_npz. A builder config carries the reader's keyword
arguments; `prepare` names a config after a hash of arguments that match no predefined one.
The features depend on the data (the "image_features" dimension, if any), and TFDS fixes
a builder's features when it is constructed, so `prepare` reads the dataset first and
hands it to the builder; a builder constructed without one (TFDS opening a copy by name)
takes its features from the copy's features.json and cannot prepare.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from jaxvna import files
from jaxvna.data import pipeline
from jaxvna.data.dataset import Dataset, DataError, Recording, SPLITS

METADATA_FILE = "jaxvna_metadata.json"
ARRAYS_FILE = "jaxvna_arrays.npz"
FORMAT_VERSION = 1
_READ_CHUNK = 512  # records per read when loading a prepared dataset back


@dataclasses.dataclass(eq=False)
class ReaderConfig(tfds.core.BuilderConfig):
  """A builder config: the keyword arguments of `readers.load` for the builder's kind."""

  reader_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _canonical_json(obj: Any) -> str:
  return json.dumps(obj, sort_keys=True, default=str)


def read_dataset(kind: str, **reader_kwargs) -> Dataset:
  """The `Dataset` a builder stores: `readers.load(kind, **reader_kwargs)`."""
  from jaxvna.data import readers  # imported late: readers may pull in heavy formats
  return readers.load(kind, **reader_kwargs)


def image_feature_dim(dataset: Dataset) -> int | None:
  """F of the dataset's (N, F) `image_features`, or None when its recordings have none.

  `Dataset` already guarantees one F for every recording, or features on none.

  Raises:
    DataError: naming the recording and field, for features that are not float32: the
      copy stores them unconverted, so that it gives back the same arrays.
  """
  for rec in dataset.recordings:
    if rec.image_features is not None and rec.image_features.dtype != np.float32:
      raise DataError(f"{rec.source or rec.name}: field 'image_features': TFDS copies store "
                      f"float32, got {rec.image_features.dtype}; cast the features to "
                      "float32 (the training pipeline reads them as float32)")
  features = dataset.recordings[0].image_features
  return None if features is None else features.shape[1]


def record_features(dataset: Dataset) -> tfds.features.FeaturesDict:
  """The TFDS features of the records of `dataset` (the `pipeline` record format)."""
  # Shapes vary between datasets (and configs), so dimensions are left open; "bytes"
  # encoding stores tensors with several unknown dimensions without TensorFlow.
  features = {
      "image": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                    encoding="bytes"),
      "responses": tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                        encoding="bytes"),
      "subject": tfds.features.Tensor(shape=(), dtype=np.int32),
      "stimulus_id": tfds.features.Tensor(shape=(), dtype=np.int64),
      "num_neurons": tfds.features.Tensor(shape=(), dtype=np.int32),
  }
  dim = image_feature_dim(dataset)
  if dim is not None:
    features["image_features"] = tfds.features.Tensor(shape=(dim,), dtype=np.float32)
  return tfds.features.FeaturesDict(features)


class RecordingsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: one record per (recording, image) of the `Dataset` a reader returns.

  Subclasses set `READER_KIND` (the `readers.load` kind) and may override `load_dataset`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: Tensor features, NaN-padded responses."}
  BUILDER_CONFIGS = [ReaderConfig(name="default", description="the reader's defaults")]
  READER_KIND: str = ""

  def __init__(self, *, dataset: Dataset | None = None, **kwargs):
    """A builder; TFDS arguments (data_dir, config, file_format, ...) go to the base class.

    Args:
      dataset: the `Dataset` to prepare (`load_dataset` of the config's reader kwargs);
        None to open a prepared copy, whose features then come from its features.json.
    """
    self._dataset = dataset  # set first: the base constructor builds `info` from it
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=None if self._dataset is None else record_features(self._dataset),
        disable_shuffling=True)  # keep key order: positions follow the metadata

  @classmethod
  def load_dataset(cls, reader_kwargs: Mapping[str, Any],
                   manual_dir: str | None) -> Dataset:
    """The `Dataset` to store: the config's reader kwargs read (from the manual folder)."""
    del manual_dir  # only manual-download builders read one
    return read_dataset(cls.READER_KIND, **dict(reader_kwargs))

  @classmethod
  def split_reader_kwargs(cls, reader_kwargs: Mapping[str, Any] | None
                          ) -> tuple[dict[str, Any], str | None]:
    """(kwargs the builder config carries, manual download folder or None)."""
    return dict(reader_kwargs or {}), None

  def _split_generators(self, dl_manager):
    if self._dataset is None:
      raise DataError(f"{self.name}: a builder writes only the dataset it was given; "
                      "prepare copies with jaxvna.data.tfds_builders.prepare")
    return {split: self._generate_examples(self._dataset, split) for split in SPLITS
            if any(len(r.indices(split)) for r in self._dataset.recordings)}

  def _generate_examples(self, dataset: Dataset, split: str):
    shape = pipeline.record_shape(dataset)
    subjects, images = pipeline.split_order(dataset, split)
    for key, (s, i) in enumerate(zip(subjects, images)):
      yield key, pipeline.make_record(dataset, int(s), int(i), shape)

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Still inside TFDS's incomplete directory: the metadata is renamed into place with
    # the records, and written last so that its presence marks a complete preparation.
    write_metadata(pathlib.Path(self.data_dir), self._dataset, kind=self.READER_KIND,
                   reader_kwargs=dict(self.builder_config.reader_kwargs))


class JaxvnaSimulator(RecordingsBuilder):
  """The embedded ground-truth simulator (`jaxvna.data.simulator.simulate`)."""

  READER_KIND = "simulator"
  BUILDER_CONFIGS = [
      ReaderConfig(name="default", description="simulate() defaults"),
      ReaderConfig(name="small", description="1000 images of 32x32, for quick runs",
                   reader_kwargs={"num_images": 1000, "image_size": 32}),
  ]


class CowleyV4(RecordingsBuilder):
  """Macaque V4 (Cowley et al. 2023); reader kwargs name the folder."""

  READER_KIND = "cowley_v4"


class AllenNaturalScenes(RecordingsBuilder):
  """Mouse V1, Allen Brain Observatory natural scenes; reader kwargs name the folder."""

  READER_KIND = "allen_natural_scenes"


def _is_sensorium_session(path: pathlib.Path) -> bool:
  return (path / "data").is_dir() and (path / "meta").is_dir()


class Sensorium2022(RecordingsBuilder):
  """Sensorium 2022 static recordings, read from the manual download folder.

  The manual folder holds one unpacked folder per session; the config's "sessions"
  (folder names, in recording order) picks some, else every session folder is read.
  """

  READER_KIND = "sensorium"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Sensorium 2022 static datasets (https://gin.g-node.org/cajal/Sensorium2022),
  unpack each session (a folder with data/ and meta/) into one folder, and name the
  session folders (or that folder) in the config's data.kwargs.roots for
  `jaxvna data --prepare_dir`.
  """

  @classmethod
  def split_reader_kwargs(cls, reader_kwargs):
    """Turns the reader's `roots` (session folders) into a manual folder + session names."""
    kwargs = dict(reader_kwargs or {})
    roots = kwargs.pop("roots", None)
    if roots is None:
      return kwargs, None
    paths = ([pathlib.Path(roots)] if isinstance(roots, (str, os.PathLike))
             else [pathlib.Path(p) for p in roots])
    if len(paths) == 1 and not _is_sensorium_session(paths[0]):
      return kwargs, os.fspath(paths[0])  # a folder of sessions: all of them
    parents = sorted({os.fspath(p.parent) for p in paths})
    if len(parents) != 1:
      raise DataError(f"sensorium: field 'roots': session folders must share one parent (the "
                      f"manual download folder) to be prepared; got parents {parents}")
    return dict(kwargs, sessions=[p.name for p in paths]), parents[0]

  @classmethod
  def load_dataset(cls, reader_kwargs, manual_dir):
    """Reads the config's "sessions" of the manual folder, else every session folder in it."""
    kwargs = dict(reader_kwargs)
    if manual_dir is None:
      raise DataError("sensorium: field 'roots': missing; name the session folders or the "
                      f"folder that holds them.{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    manual = pathlib.Path(manual_dir)
    found = manual.iterdir() if manual.is_dir() else ()
    sessions = kwargs.pop("sessions", None) or sorted(
        p.name for p in found if _is_sensorium_session(p))
    if not sessions:
      raise DataError(f"{manual}: no Sensorium session folders (folders with data/ and "
                      f"meta/).{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return read_dataset(cls.READER_KIND, roots=[os.fspath(manual / s) for s in sessions],
                        **kwargs)


class JaxvnaNpz(RecordingsBuilder):
  """Recordings from jaxvna's own .npz format; reader kwargs name the file(s)."""

  READER_KIND = "npz"


BUILDERS: dict[str, type[RecordingsBuilder]] = {
    cls.READER_KIND: cls for cls in (JaxvnaSimulator, CowleyV4, AllenNaturalScenes,
                                     Sensorium2022, JaxvnaNpz)}


# ----------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------

def write_metadata(path: pathlib.Path, dataset: Dataset, *, kind: str,
                   reader_kwargs: Mapping[str, Any]) -> None:
  """Writes what records do not hold (neuron coords, splits, ids, truth) into `path`.

  "image_feature_dim" is F, or None when the records hold no "image_features" (always so
  in copies written before features were stored, which lack the field).
  """
  arrays, recordings = {}, []
  for i, rec in enumerate(dataset.recordings):
    arrays[f"rec{i}_neuron_coords"] = rec.neuron_coords
    arrays[f"rec{i}_split"] = rec.split
    arrays[f"rec{i}_stimulus_ids"] = rec.stimulus_ids
    truth_keys, dropped = [], []
    for key, value in (rec.truth or {}).items():
      value = np.asarray(value)
      if value.dtype == object:
        dropped.append(key)  # not an array: npz would need pickling
        continue
      arrays[f"rec{i}_truth_{key}"] = value
      truth_keys.append(key)
    recordings.append({"name": rec.name, "source": rec.source, "num_images": rec.num_images,
                       "num_repeats": int(rec.responses.shape[1]),
                       "num_neurons": rec.num_neurons, "has_truth": rec.truth is not None,
                       "truth_keys": truth_keys, "dropped_truth_keys": dropped})
  with open(path / ARRAYS_FILE, "wb") as f:
    np.savez(f, **arrays)
  meta = {"format_version": FORMAT_VERSION, "dataset_name": dataset.name, "kind": kind,
          "reader_kwargs": json.loads(_canonical_json(dict(reader_kwargs))),
          "image_shape": list(dataset.image_shape),
          "record_shape": list(pipeline.record_shape(dataset)),
          "image_feature_dim": image_feature_dim(dataset),
          "recordings": recordings}
  with open(path / METADATA_FILE, "w") as f:
    json.dump(meta, f, indent=1)


def is_prepared(path: str | os.PathLike) -> bool:
  """Whether `path` holds a complete preparation (records, TFDS info and metadata)."""
  path = pathlib.Path(path)
  return (path / "dataset_info.json").is_file() and (path / METADATA_FILE).is_file()


def read_metadata(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
  """(metadata, arrays) of a prepared dataset; DataError if it is incomplete or foreign."""
  path = pathlib.Path(path)
  if not is_prepared(path):
    raise DataError(f"{path}: not a complete prepared dataset (expected dataset_info.json "
                    f"and {METADATA_FILE}); run `jaxvna data --prepare_dir` again")
  with open(path / METADATA_FILE) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{path / METADATA_FILE}: field 'format_version': expected "
                    f"{FORMAT_VERSION}, got {meta.get('format_version')!r}")
  with np.load(path / ARRAYS_FILE) as npz:
    arrays = {k: npz[k] for k in npz.files}
  return meta, arrays


# ----------------------------------------------------------------------------
# Preparing
# ----------------------------------------------------------------------------

def builder_class(kind: str) -> type[RecordingsBuilder]:
  """The builder of a reader kind ("simulator", ...) or of a TFDS name ("jaxvna_simulator")."""
  for cls in BUILDERS.values():
    if kind in (cls.READER_KIND, cls.name):
      return cls
  raise ValueError(f"unknown data kind {kind!r}; expected one of {sorted(BUILDERS)} "
                   f"(or TFDS names {sorted(c.name for c in BUILDERS.values())})")


def builder_config(kind: str, reader_kwargs: Mapping[str, Any] | None = None) -> ReaderConfig:
  """The predefined config whose kwargs equal `reader_kwargs`, else one named by their hash."""
  cls = builder_class(kind)
  kwargs = dict(reader_kwargs or {})
  for config in cls.BUILDER_CONFIGS:
    if _canonical_json(dict(config.reader_kwargs)) == _canonical_json(kwargs):
      return config
  digest = hashlib.sha256(_canonical_json(kwargs).encode()).hexdigest()[:12]
  return ReaderConfig(name=f"kw{digest}", description=_canonical_json(kwargs),
                      reader_kwargs=kwargs)


def _resolve(kind: str, reader_kwargs: Mapping[str, Any] | None):
  """(builder class, config, manual_dir) for `prepare`'s arguments.

  The config carries the reader kwargs the builder uses; its name also covers the manual
  folder, so two folders are never taken for one another.
  """
  cls = builder_class(kind)
  config_kwargs, manual_dir = cls.split_reader_kwargs(reader_kwargs)
  if manual_dir is None:
    return cls, builder_config(kind, config_kwargs), None
  named = builder_config(kind, dict(config_kwargs, manual_dir=os.fspath(manual_dir)))
  return cls, dataclasses.replace(named, reader_kwargs=config_kwargs), manual_dir


def prepared_dir(kind: str, data_dir: str | os.PathLike, *,
                 reader_kwargs: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Where `prepare(kind, data_dir, reader_kwargs=...)` puts the dataset."""
  cls, config, _ = _resolve(kind, reader_kwargs)
  return pathlib.Path(data_dir).absolute() / cls.name / config.name / str(cls.VERSION)


def prepare(kind: str, data_dir: str | os.PathLike, *, reader_kwargs: Mapping[str, Any],
            overwrite: bool = False) -> pathlib.Path:
  """Writes the ArrayRecord copy of the `kind` dataset read with `reader_kwargs`.

  Atomic: the dataset is built in a temporary folder inside `data_dir` and renamed into
  place only when complete (records, TFDS info, metadata), so a failure part-way leaves
  nothing that a later call or `read_prepared` takes for a prepared dataset. An existing
  complete copy is reused unless `overwrite`; an incomplete one is replaced. A
  destination folder holding anything but the files of a copy is never replaced.

  Args:
    kind: a `readers.load` kind ("simulator", "cowley_v4", ...).
    data_dir: the TFDS data folder.
    reader_kwargs: keyword arguments of `readers.load(kind, ...)`; for "sensorium" the
      session folders (`roots`) become the manual download folder (their parent, or
      `roots` itself when it is a folder of sessions) and session names.
    overwrite: rebuild even if a complete copy exists.

  Returns:
    the prepared dataset's folder, `prepared_dir(kind, data_dir, reader_kwargs=...)`.

  Raises:
    RefusedPathError: that folder is a file, or holds files other than a copy's (before
      anything is read or built).
  """
  cls, config, manual_dir = _resolve(kind, reader_kwargs)
  final = prepared_dir(kind, data_dir, reader_kwargs=reader_kwargs)
  if is_prepared(final) and not overwrite:
    return final
  # Refused before reading: nothing is built for a destination that cannot be replaced.
  files.check_replaceable(final, is_ours=_is_copy, what=_COPY, folder=True,
                          explain=_explain)
  final.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".incomplete-{cls.name}-", dir=final.parent))
  try:
    dataset = cls.load_dataset(config.reader_kwargs, manual_dir)
    predefined = any(c.name == config.name for c in cls.BUILDER_CONFIGS)
    builder = cls(data_dir=os.fspath(staging / "tfds"), file_format="array_record",
                  config=config.name if predefined else config, dataset=dataset)
    builder.download_and_prepare(download_dir=os.fspath(staging / "downloads"))
    built = pathlib.Path(builder.data_dir)
    if not is_prepared(built):
      raise DataError(f"{built}: preparation ended without {METADATA_FILE}")
    if is_prepared(final) and not overwrite:
      return final  # prepared meanwhile by another call
    files.move_dir_into_place(built, final, is_ours=_is_copy, what=_COPY,
                             explain=_explain)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final


_COPY = "a prepared jaxvna dataset (or an incomplete one)"
# The files of a prepared version folder: TFDS's description, jaxvna's metadata and the
# record shards "<builder name>-<split>.array_record-<shard>-of-<count>".
_COPY_FILES = ("dataset_info.json", "features.json", METADATA_FILE, ARRAYS_FILE)
_SHARD = re.compile(r"[a-z0-9_]+-(%s)\.array_record-\d+-of-\d+" % "|".join(SPLITS))


def _foreign(path: pathlib.Path) -> list[str]:
  """The entries of the folder `path` that are not files of a prepared copy, sorted."""
  return sorted(p.name for p in path.iterdir()
                if p.is_symlink() or not p.is_file()
                or not (p.name in _COPY_FILES or _SHARD.fullmatch(p.name)))


def _is_copy(path: pathlib.Path) -> bool:
  """Whether the folder `path` holds files of a prepared copy only (complete or not).

  `prepare` replaces such a folder; a folder holding anything else is not its to delete.
  """
  return not path.is_symlink() and path.is_dir() and not _foreign(path)


def _explain(path: pathlib.Path) -> str | None:
  """The entries of a refused folder that a copy does not hold, for the message."""
  if path.is_symlink() or not path.is_dir():
    return None
  names = _foreign(path)
  return f"not a copy's: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------

def _as_record(values: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """`pipeline.as_record`, keeping "image_features" (float32) where the copy stores them."""
  record = pipeline.as_record(values)
  if "image_features" in values:
    record["image_features"] = np.asarray(values["image_features"], np.float32)
  return record


def _split_subjects(meta: dict, arrays: Mapping[str, np.ndarray], split: str) -> np.ndarray:
  """(n,) subject of each record of `split`, in record order."""
  code = SPLITS.index(split)
  counts = [int(np.sum(arrays[f"rec{i}_split"] == code)) for i in range(len(meta["recordings"]))]
  return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


class PreparedSource:
  """Random access to the records of one split of a prepared dataset (`pipeline` format),
  optionally a nested `fraction` of each subject's records (`pipeline.nested_subset`, so
  the same records as `pipeline.DatasetSource` of the dataset the copy holds).

  Records carry "image_features" (F,) float32 when the prepared dataset has them.
  """

  def __init__(self, path: str | os.PathLike, split: str, *, fraction: float = 1.0,
               subset_seed: int = 0):
    self.path = pathlib.Path(path)
    self.split = split
    meta, arrays = read_metadata(self.path)
    self.metadata = meta
    subjects = _split_subjects(meta, arrays, split)
    if not len(subjects):
      raise DataError(f"{self.path}: split {split!r} holds no images")
    self._records = tfds.builder_from_directory(os.fspath(self.path)).as_data_source(split)
    if len(self._records) != len(subjects):
      raise DataError(f"{self.path}: split {split!r} holds {len(self._records)} records, "
                      f"the metadata expects {len(subjects)}")
    for i in (0, len(subjects) - 1):  # cheap check that records are in the expected order
      found = int(self._records[i]["subject"])
      if found != subjects[i]:
        raise DataError(f"{self.path}: record {i} of split {split!r} belongs to subject "
                        f"{found}, expected {subjects[i]}")
    self._positions = np.arange(len(subjects))
    if fraction != 1.0:
      keep = pipeline.nested_subset(subjects, fraction, subset_seed)
      subjects, self._positions = subjects[keep], np.flatnonzero(keep)
    self.subjects = subjects
    self.neuron_counts = tuple(r["num_neurons"] for r in meta["recordings"])
    self.record_shape = tuple(meta["record_shape"])
    self.image_shape = tuple(meta["image_shape"])

  def __len__(self) -> int:
    return len(self.subjects)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return _as_record(self._records[int(self._positions[index])])

  def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
    positions = [int(self._positions[int(i)]) for i in indices]
    return [_as_record(r) for r in self._records.__getitems__(positions)]

  def take(self, indices) -> dict[str, np.ndarray]:
    """The records of `indices` stacked (leading axis len(indices)), as
    `pipeline.DatasetSource.take`; ArrayRecord reads them in one call."""
    records = self.__getitems__(indices)
    return {k: np.stack([r[k] for r in records]) for k in records[0]}

  def __repr__(self):
    return f"PreparedSource({os.fspath(self.path)!r}, {self.split!r}, {len(self)} records)"


def read_prepared(path: str | os.PathLike) -> Dataset:
  """The `Dataset` stored in a prepared folder (records, metadata and arrays)."""
  path = pathlib.Path(path)
  meta, arrays = read_metadata(path)
  recs = meta["recordings"]
  images = [np.zeros((r["num_images"], *meta["image_shape"]), np.uint8) for r in recs]
  responses = [np.zeros((r["num_images"], r["num_repeats"], r["num_neurons"]), np.float32)
               for r in recs]
  feature_dim = meta.get("image_feature_dim")  # absent from copies without features
  features = [None if feature_dim is None else np.zeros((r["num_images"], feature_dim),
                                                        np.float32) for r in recs]
  filled = [np.zeros(r["num_images"], bool) for r in recs]
  position = [{int(sid): j for j, sid in enumerate(arrays[f"rec{i}_stimulus_ids"])}
              for i in range(len(recs))]
  for split in SPLITS:
    if not len(_split_subjects(meta, arrays, split)):
      continue
    source = PreparedSource(path, split)
    for start in range(0, len(source), _READ_CHUNK):
      for record in source.__getitems__(range(start, min(start + _READ_CHUNK, len(source)))):
        s, sid = int(record["subject"]), int(record["stimulus_id"])
        j = position[s].get(sid) if 0 <= s < len(recs) else None
        if j is None or filled[s][j]:
          raise DataError(f"{path}: split {split!r}: record of subject {s}, stimulus {sid} "
                          "is unknown to the metadata or repeated")
        r, k = responses[s].shape[1:]
        images[s][j] = record["image"]
        responses[s][j] = record["responses"][:r, :k]
        if feature_dim is not None:
          features[s][j] = record["image_features"]
        filled[s][j] = True
  recordings = []
  for i, r in enumerate(recs):
    if not filled[i].all():
      raise DataError(f"{path}: recording {r['name']!r}: {int((~filled[i]).sum())} images "
                      "have no record")
    truth = ({k: arrays[f"rec{i}_truth_{k}"] for k in r["truth_keys"]}
             if r["has_truth"] else None)
    recordings.append(Recording(
        name=r["name"], images=images[i], responses=responses[i],
        neuron_coords=arrays[f"rec{i}_neuron_coords"], split=arrays[f"rec{i}_split"],
        stimulus_ids=arrays[f"rec{i}_stimulus_ids"], source=r["source"], truth=truth,
        image_features=features[i]))
  return Dataset(meta["dataset_name"], tuple(recordings))


def load_prepared(kind: str, data_dir: str | os.PathLike, *,
                  reader_kwargs: Mapping[str, Any] | None = None) -> Dataset:
  """The `Dataset` that `prepare(kind, data_dir, reader_kwargs=...)` stored."""
  return read_prepared(prepared_dir(kind, data_dir, reader_kwargs=reader_kwargs))
