"""Training: the trainer, crash-safe checkpoints (`jaxvna.training.checkpoint`) and run guards."""
