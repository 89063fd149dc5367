"""Evaluation: discriminative identification (`identification`) and neural predictivity
(`predictivity`). Both are plain numpy, so importing them stays light."""

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
