"""Data: the common in-memory structure, the simulator, readers, TFDS builders, pipeline."""

from jaxvna.data.dataset import DataError, Dataset, Recording, SPLITS, summarize

__all__ = ["DataError", "Dataset", "Recording", "SPLITS", "summarize"]
