"""Metrics: N-way discriminative identification (`identification`), neural predictivity
(`predictivity`), latent recovery against a ground truth (`identifiability`: MCC),
disentanglement scores (`disentanglement`: MIG, SAP), the per-subject evaluation of a
method's held-out representations (`discriminative`), and a value against its target
(`targets`). The first two are re-exported here;
all are plain numpy at import, so importing them stays light."""

from jaxvna.evaluation.identification import (
    cosine_similarity, discriminative_scores, discriminative_similarity,
    identification_report, nway_accuracy, pearson_similarity, similarity_matrix,
    single_trial_queries)
from jaxvna.evaluation.predictivity import (
    correlation_to_average, explainable_variance, feve, fraction_explainable_variance,
    per_neuron_correlation, predictivity_report, single_trial_correlation)

__all__ = [
    "cosine_similarity", "correlation_to_average", "discriminative_scores",
    "discriminative_similarity", "explainable_variance", "feve",
    "fraction_explainable_variance", "identification_report", "nway_accuracy",
    "pearson_similarity", "per_neuron_correlation", "predictivity_report",
    "similarity_matrix", "single_trial_correlation", "single_trial_queries",
]
