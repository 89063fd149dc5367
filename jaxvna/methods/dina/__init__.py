"""DINA: VNA's contrastive alignment at several intermediate feature maps of the image
tower at once (one head per level, one loss term per level, in one step), with spatial
contribution maps and key-neuron analysis (`jaxvna interpret`, `interpret.run`)."""

from __future__ import annotations

from jaxvna import losses, registry
from jaxvna.errors import ConfigError
from jaxvna.evaluation import discriminative
from jaxvna.methods.dina import interpret, modules
from jaxvna.models import inputs


def build_model(config, dataset, aux=None):
  del aux
  return modules.build_dina(config, dataset.neuron_counts, dataset.image_shape)


def init_args(config, dataset, aux=None) -> tuple:
  del aux
  return inputs.example_inputs(config, dataset)


def objective(config, model, mesh, aux=None):
  """The DINA loss: sum over levels l of level_weights[l] * clip(img_l, neu_l, temperature_l),
  every term through `losses.clip_loss` on the same mesh, in one step."""
  del aux
  if config.loss.type != "clip":
    raise ConfigError(f"method 'dina' trains with config.loss.type='clip', got "
                      f"{config.loss.type!r}")

  def dina_loss(params, batch, rng, step=None):
    img, neu, temperatures = model.apply({"params": params}, batch["image"], batch["response"],
                                         batch["subject"], train=True, rngs={"dropout": rng})
    metrics, loss = {}, 0.0
    for i, (level, weight) in enumerate(zip(model.levels, model.level_weights)):
      term = losses.clip_loss(img[level], neu[level], temperatures[i], mesh=mesh,
                              impl=config.loss.impl)
      loss = loss + weight * term
      metrics[f"loss_{level}"] = term
      metrics[f"temperature_{level}"] = temperatures[i]
    return loss, dict(metrics, loss=loss)
  return dina_loss


METHODS = {"dina": registry.Method(
    name="dina", build_model=build_model, init_args=init_args, objective=objective,
    # Scored by its weighted joint embeddings (`modules.DINA.joint`).
    represent=discriminative.embedding_represent, commands={"interpret": interpret.run},
    title="DINA",
    example_config="configs/dina_sim.py")}
