"""Data: the common in-memory structure (`dataset`), the ground-truth simulator
(`simulator`), readers of real recordings (`readers`), TFDS ArrayRecord copies
(`tfds_builders`), the grain input pipeline (`pipeline`) and the device-resident training
input (`resident`)."""

from jaxvna.data.dataset import DataError, Dataset, Recording, SPLITS, summarize

__all__ = ["DataError", "Dataset", "Recording", "SPLITS", "summarize"]
