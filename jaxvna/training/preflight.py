"""Checks that a run can work, made before any data is loaded or anything compiled.

`check_config` validates every numeric field of a config against the rule its name
selects (`RULES`): a value that cannot work (`train.checkpoint_every=0`, `optim.lr=-1`,
`train.steps=0`, a NaN weight) is a `ConfigError` naming the field, the value and what is
allowed. `check_training_data` and `check_evaluation_data` look at what the run will need
from the dataset (enough training examples for one batch without repeats, held-out images
to evaluate on, counts for Poisson objectives) before the first step, not after it.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Iterator

import numpy as np

from jaxvna import registry
from jaxvna.data.dataset import DataError, Dataset
from jaxvna.errors import ConfigError
from jaxvna.training import summaries

_SEED_LIMIT = 2**32


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
  return (_is_int(v) or isinstance(v, (float, np.floating))) and not isinstance(v, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(test: Callable[[float], bool], allowed: str) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_number(v) and math.isfinite(v) and test(float(v))), allowed


def _each(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
  test, allowed = rule
  return (lambda v: isinstance(v, (tuple, list)) and all(test(x) for x in v),
          f"a sequence whose every entry is {allowed}")


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
  test, allowed = rule
  return (lambda v: v is None or test(v)), f"None or {allowed}"


def _profile_steps(v) -> bool:
  try:
    summaries.parse_profile_steps(v)
  except ConfigError:
    return False
  return True


_POSITIVE = _number(lambda x: x > 0, "a finite number > 0")
_NON_NEGATIVE = _number(lambda x: x >= 0, "a finite number >= 0")
_FRACTION = _number(lambda x: 0 < x <= 1, "a number in (0, 1]")
_SEED = ((lambda v: _is_int(v) and 0 <= v < _SEED_LIMIT), "an integer in [0, 2**32)")
_N_WAY = ((lambda v: v == "all" or (_is_int(v) and v >= 2)), "an integer >= 2 or 'all'")

# (pattern of the dotted key, rule); the first pattern that matches a key decides. A
# pattern matches the whole key or its last parts ("*.lr" matches "stages.critic.lr").
RULES: tuple[tuple[str, tuple[Callable[[Any], bool], str]], ...] = (
    ("*seed", _SEED),
    ("*.seeds", _each(_SEED)),
    ("*.warmup_steps", _int_at_least(0)),
    ("*.kl_anneal_steps", _int_at_least(0)),
    ("*.decay_steps", _optional(_int_at_least(1))),
    ("*.profile_steps", (_profile_steps, summaries.PROFILE_STEPS_ALLOWED)),
    ("*steps", _int_at_least(1)),
    ("*.batch_size", _int_at_least(1)),
    ("*.steps_per_call", _int_at_least(1)),
    ("*.read_threads", _int_at_least(0)),
    ("*.worker_processes", _int_at_least(0)),
    ("*_mb", _POSITIVE),
    ("*_every", _int_at_least(1)),
    ("*.keep_checkpoints", _int_at_least(1)),
    ("*.max_consecutive_nonfinite", _int_at_least(1)),
    ("*.lr", _POSITIVE),
    ("*.weight_decay", _NON_NEGATIVE),
    ("*.clip_norm", _POSITIVE),
    ("*.final_lr_fraction", _number(lambda x: 0 <= x <= 1, "a number in [0, 1]")),
    ("*dropout", _number(lambda x: 0 <= x < 1, "a number in [0, 1)")),
    ("*temperature", _POSITIVE),
    ("*.train_fraction", _FRACTION),
    ("scaling.fractions", _each(_FRACTION)),
    ("*.ablation_fractions", _each(_FRACTION)),
    ("*fractions", _each(_number(lambda x: 0 <= x <= 1, "a number in [0, 1]"))),
    ("*weights", _each(_NON_NEGATIVE)),
    ("*weight", _NON_NEGATIVE),
    ("*.n_ways", _each(_N_WAY)),
    ("*n_way", _N_WAY),
    ("*.t0", _FRACTION),
    ("*.scales", _each(_POSITIVE)),
    ("*.channels", _each(_int_at_least(1))),
    ("*hidden", _each(_int_at_least(1))),
    ("*_sd", _NON_NEGATIVE),
    ("*sigma", _NON_NEGATIVE),
    ("*smoothing", _NON_NEGATIVE),
    ("*_dim", _int_at_least(1)),
    ("*.input_size", _int_at_least(0)),  # 0: the pretrained network's own
    ("*_size", _int_at_least(1)),
    ("*.num_*", _int_at_least(1)),
    ("*_images", _int_at_least(1)),
    ("*_bins", _int_at_least(1)),
    ("*.draws", _int_at_least(1)),
    ("*.rounds", _int_at_least(1)),
    ("*.bootstrap", _int_at_least(1)),
    ("*_groups", _int_at_least(1)),
)


GRID = "select.grid."  # the values `jaxvna select` tries, under the keys they set


def _leaves(tree, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, value in tree.items():
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _matches(key: str, pattern: str) -> bool:
  # "*.lr" should match "stages.critic.lr" and also a top-level "lr".
  return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase("." + key, pattern)


def config_problems(config) -> list[str]:
  """One line per field of `config` whose value breaks the rule its name selects."""
  problems = []
  for key, value in _leaves(config):
    if key.startswith(GRID):  # `jaxvna select`'s values: each by the rule of its field
      rule = next((r for pattern, r in RULES if _matches(key[len(GRID):], pattern)), None)
      values = value if isinstance(value, (tuple, list)) else (value,)
      if rule is not None and not all(rule[0](v) for v in values):
        problems.append(f"config.{key}={value!r}: expected each value {rule[1]}")
      continue
    rule = next((r for pattern, r in RULES if _matches(key, pattern)), None)
    if rule is not None:
      test, allowed = rule
      ok = test(value)
    else:  # Fields without a rule: any number in them must at least be finite.
      ok, allowed = not (_is_number(value) and not math.isfinite(value)), "a finite number"
    if not ok:
      problems.append(f"config.{key}={value!r}: expected {allowed}")
  return problems


def check_config(config) -> None:
  """Raises ConfigError listing every numeric field whose value cannot work."""
  problems = config_problems(config)
  if problems:
    raise ConfigError("; ".join(problems))


def _training_examples(config, dataset: Dataset) -> int:
  """How many (subject, image) examples one epoch of training draws from."""
  from jaxvna.data import pipeline  # pylint: disable=g-import-not-at-top
  source = pipeline.DatasetSource(dataset, "train", fraction=config.data.train_fraction,
                                  subset_seed=config.seed)
  return len(source)


def check_training_data(config, dataset: Dataset, device_count: int) -> None:
  """What training `config` needs from `dataset`, checked before the first step.

  Raises:
    ConfigError: the batch is not a multiple of the devices, or a method that decodes
      pixels has a decoder_size that does not divide the images' sides.
    DataError: fewer training examples than one batch (training would repeat examples
      inside a batch), or negative responses for a Poisson objective (whose loss is
      then unbounded below).
  """
  batch = config.train.batch_size
  if batch % device_count:
    raise ConfigError(f"config.train.batch_size={batch} is not a multiple of the "
                      f"{device_count} devices")
  if registry.get(config.method).decodes_pixels:
    size = config.model.decoder_size
    for rec in dataset.recordings:
      h, w = rec.images.shape[1:3]
      if h % size or w % size:
        fits = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
        raise ConfigError(
            f"config.model.decoder_size={size}: {rec.source or rec.name} holds {h}x{w} "
            f"images; {config.method} reconstructs each as {size}x{size} block averages, "
            f"so the size must divide both sides (here: {', '.join(map(str, fits))})")
  examples = _training_examples(config, dataset)
  if examples < batch:
    raise DataError(
        f"dataset {dataset.name!r}: {examples} training examples (split 'train', "
        f"config.data.train_fraction={config.data.train_fraction}) do not fill one batch of "
        f"config.train.batch_size={batch} without repeating examples; use a smaller batch "
        "or more training images")
  if registry.get(config.method).poisson_likelihood(config):
    for rec in dataset.recordings:
      negative = np.nan_to_num(rec.responses, nan=0.0) < 0
      if negative.any():
        raise DataError(
            f"{rec.source or rec.name}: responses: {int(negative.sum())} negative values "
            f"(min {np.nanmin(rec.responses):.4g}); the {config.method} objective is a "
            f"Poisson likelihood of counts, which must be >= 0. Give spike counts or "
            f"rates, or a non-Poisson loss where the method has one (direct encoding: "
            f"config.baseline.encoding_loss='mse')")


def check_evaluation_data(config, dataset: Dataset) -> None:
  """Raises DataError when a recording has too few held-out images to be evaluated.

  N-way identification needs at least 2 images of `config.eval.split` in every
  recording; checked before training rather than after it.
  """
  split = config.eval.split
  short = [f"{rec.name} ({rec.indices(split).size})" for rec in dataset.recordings
           if rec.indices(split).size < 2]
  if short:
    raise DataError(
        f"dataset {dataset.name!r}: recordings {', '.join(short)} hold fewer than 2 images "
        f"of split {split!r} (config.eval.split); discriminative evaluation needs at least 2 "
        "per recording")
