"""Intra-class cohesion of features, as an `evaluate` metric module that ships with synermix_hf and loads offline.

    import evaluate
    cohesion = evaluate.load("<path to synermix_hf>/metrics/feature_cohesion")
    cohesion.compute(features=features, references=labels)  # {"cohesion": ...}

Definition. For features h_1..h_N (rows of `features`) with class labels y_1..y_N, let I_c be the examples of class c,
n_c = |I_c|, and mu_c = (1 / n_c) sum_{i in I_c} h_i the class centroid. Then

    cohesion = (1 / N) sum_i cos(h_i, mu_{y_i}),     cos(a, b) = <a, b> / (||a|| ||b||).

It lies in [-1, 1] (in [0, 1] for non-negative features such as ResNet's pooled ReLU outputs); 1 means every feature
points exactly in its class centroid's direction. It depends on directions only: scaling all features changes nothing.

Degenerate cases:
* a class with one example: mu_c = h_i, and its cosine is 1 by definition (also when h_i = 0). It is counted like any
  other example, so classes with a single example pull cohesion towards 1;
* one class overall: the formula applies unchanged (the centroid of all features);
* a zero vector (h_i = 0 or mu_c = 0) in a class with two or more examples: its cosine is 0;
* no examples: nan.
All arithmetic is in float64.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Intra-class cohesion: the mean, over examples, of the cosine similarity between an example's feature vector and "
    "the centroid (mean feature) of its class."
)

_KWARGS_DESCRIPTION = """
Args:
    features (`list` of `list` of `float`): Feature vectors, shape [N, D] (e.g. penultimate features).
    references (`list` of `int`): Class id of every feature vector, shape [N].
Returns:
    cohesion (`float`): (1/N) sum_i cos(h_i, mu_{y_i}), in [-1, 1]; nan when N = 0.
"""


def feature_cohesion(features, references) -> float:
    """Mean cosine similarity of each feature to its class centroid (see the module docstring)."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(references, dtype=np.int64).reshape(-1)
    if y.size == 0:
        return float("nan")
    h = h.reshape(len(y), -1)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), h.shape[1]))
    np.add.at(sums, inverse, h)
    centroid = (sums / counts[:, None])[inverse]
    norms = np.linalg.norm(h, axis=1) * np.linalg.norm(centroid, axis=1)
    dots = np.einsum("ij,ij->i", h, centroid)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    cos[counts[inverse] == 1] = 1.0
    return float(np.clip(cos, -1.0, 1.0).mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FeatureCohesion(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"features": datasets.List(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, features, references):
        return {"cohesion": feature_cohesion(features, references)}
