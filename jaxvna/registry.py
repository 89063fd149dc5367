"""The methods jaxvna trains, looked up by name: `registry.get(config.method)`.

Each method lives in its own package under `jaxvna/methods/` and exposes a dict `METHODS`
of `Method` records, one per name it trains. This module maps a name to its package and
imports the package only when the method is asked for (big_vision's `importlib` on
`config.model_name`), so shared code, the trainer included, never imports a method and
never names one. Adding a method: its folder, and one line in `PACKAGES`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

from jaxvna.errors import ConfigError

# name -> the package whose METHODS holds its record.
PACKAGES: Mapping[str, str] = {
    "vna": "jaxvna.methods.vna",
    "direct_encoding": "jaxvna.methods.direct",
    "direct_decoding": "jaxvna.methods.direct",
    "dina": "jaxvna.methods.dina",
    "mivae": "jaxvna.methods.mivae",
    "group_vae": "jaxvna.methods.migvis",
    "critic": "jaxvna.methods.migvis",
    "diffusion": "jaxvna.methods.migvis",
    "gabor_lit": "jaxvna.methods.gabor_lit",
}


def _all_subjects(config, dataset):
  del config
  return dataset


def _nothing(config, dataset):
  del config, dataset


def _never(config) -> bool:
  del config
  return False


@dataclasses.dataclass(frozen=True)
class NullControl:
  """A null control: the run's training again under `change(config)` on `data(config,
  dataset)`, in workdir/<name>, evaluated the same way on the same held-out images and
  reported under results[<method>][<name>]. Every method gets image-response pairs
  shuffled within subject (`training.train.PAIRS_SHUFFLED`); a method adds its own in
  `Method.null_controls`.

  Attributes:
    name: its workdir and results key ("null_neurons").
    at_chance: (config, dataset) -> the subjects whose identification must then sit at
      chance (e.g. only the held-out ones; none: the control is skipped).
    description: what is shuffled, for tables and warnings.
    change: config -> the control's config (a changed copy; default: the run's).
    data: (config, dataset) -> the control's dataset (default: the run's).
  """

  name: str
  at_chance: Callable[[Any, Any], Any]
  description: str
  change: Callable[[Any], Any] = lambda config: config
  data: Callable[[Any, Any], Any] = lambda config, dataset: dataset


@dataclasses.dataclass(frozen=True)
class Method:
  """What the trainer, the evaluators and the commands need to know of one method.

  Every callable takes the run's config first. `aux` is what `prepare` computed from the
  training data (miVAE's neuron table; None for the others).

  Attributes:
    name: the value of `config.method`.
    build_model: (config, dataset, aux) -> an unbound Flax module for the dataset's neuron
      counts and image shape.
    init_args: (config, dataset, aux) -> the positional inputs of `model.init`, batch 1.
    objective: (config, model, mesh, aux) -> objective(params, batch, rng, step) ->
      (loss, metrics), differentiated inside the trainer's single jitted step.
    represent: (config, model, params) -> represent(held_out, trials, subject, k_max) ->
      the method's representations of a recording's held-out images and responses
      (`evaluation.discriminative.Represent`); a method that has one is scored by
      discriminative decoding and encoding (`jaxvna train`, `jaxvna scaling`).
    evaluate: (config, model, params, dataset, workdir) -> {name: results} on held-out
      data, for methods evaluated otherwise (None: `represent` decides, or the method has
      no evaluation of its own, e.g. a stage of another).
    prepare: (config, training dataset) -> aux, computed once before the model is built.
    training_subjects: (config, dataset) -> the dataset of the subjects it trains on.
    poisson_likelihood: (config) -> whether its objective is a Poisson likelihood of the
      responses (which must then be counts, >= 0).
    decodes_pixels: its objective reconstructs each image as a config.model.decoder_size
      square of block averages (`models.inputs.downsample_images`), whose side must then
      divide the image's.
    commands: CLI verbs the method adds: {verb: fn(config, workdir, *, force)}.
    in_demo: `jaxvna demo` trains it on the demo config (with `method` set to its name)
      and puts it in the comparison table.
    title: how the README and messages name it ("DINA").
    example_config: a shipped config that runs it.
    null_controls: its own `NullControl`s, run with the shuffled-pairs control.
    summary: (its results) -> text tables that `jaxvna train` and `jaxvna eval` print
      (None: they print none).
  """

  name: str
  build_model: Callable[..., Any]
  init_args: Callable[..., tuple]
  objective: Callable[..., Callable]
  represent: Callable[..., Callable] | None = None
  evaluate: Callable[..., dict] | None = None
  prepare: Callable[..., Any] = _nothing
  training_subjects: Callable[..., Any] = _all_subjects
  poisson_likelihood: Callable[[Any], bool] = _never
  decodes_pixels: bool = False
  commands: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
  in_demo: bool = False
  title: str = ""
  example_config: str = ""
  null_controls: tuple[NullControl, ...] = ()
  summary: Callable[[dict], str] | None = None


def get(name: str) -> Method:
  """The record of method `name`.

  Raises:
    ConfigError: no method of that name.
  """
  if name not in PACKAGES:
    raise ConfigError(f"config.method: unknown {name!r}; expected one of {sorted(PACKAGES)}")
  return importlib.import_module(PACKAGES[name]).METHODS[name]


def in_demo() -> list[Method]:
  """The methods `jaxvna demo` compares, in `PACKAGES` order."""
  return [m for m in map(get, PACKAGES) if m.in_demo]


def with_command(verb: str) -> list[Method]:
  """The methods that add the CLI verb `verb`, in `PACKAGES` order."""
  return [m for m in map(get, PACKAGES) if verb in m.commands]
