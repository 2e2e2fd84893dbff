"""Inter-class separability of features, as an `evaluate` metric module that ships with synermix_hf and loads offline.

    import evaluate
    separability = evaluate.load("<path to synermix_hf>/metrics/feature_separability")
    separability.compute(features=features, references=labels)  # {"separability": ...}

Definition. For features h_1..h_N with class labels y_1..y_N, class centroids mu_c (mean over the n_c examples of
class c) and the overall mean mu = (1 / N) sum_i h_i, the between-class and within-class scatter traces are

    tr(S_B) = sum_c n_c ||mu_c - mu||^2,        tr(S_W) = sum_i ||h_i - mu_{y_i}||^2,

and separability = tr(S_B) / tr(S_W), the ratio of the traces of the between-class and within-class scatter matrices
(the Fisher criterion in trace form). It is >= 0, larger when class centroids lie far apart compared to the spread of
each class around its centroid, and does not change when all features are scaled or shifted together. (It is the
Calinski-Harabasz index without its degrees-of-freedom factor (N - k) / (k - 1), k the number of classes.)

Degenerate cases:
* one class: mu_c = mu, so tr(S_B) = 0 and separability = 0 (nothing is separated);
* a class with one example: it adds nothing to tr(S_W) and n_c ||mu_c - mu||^2 to tr(S_B), as the formula says;
* tr(S_B) = 0 (all class centroids equal, e.g. all features identical): 0, also when tr(S_W) = 0;
* tr(S_W) = 0 < tr(S_B) (every class collapsed onto its centroid, e.g. every class has one example): +inf;
* no examples: nan.
All arithmetic is in float64; a trace counts as 0 when it is below 1e-12 * sum_i ||h_i||^2, so that rounding in the
centroids does not turn an exact 0 into a tiny number.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Inter-class separability: the trace of the between-class scatter over the trace of the within-class scatter of "
    "the feature vectors, tr(S_B) / tr(S_W)."
)

_KWARGS_DESCRIPTION = """
Args:
    features (`list` of `list` of `float`): Feature vectors, shape [N, D] (e.g. penultimate features).
    references (`list` of `int`): Class id of every feature vector, shape [N].
Returns:
    separability (`float`): tr(S_B) / tr(S_W) >= 0; 0 with a single class, +inf when tr(S_W) = 0 < tr(S_B), nan when
        N = 0.
"""


def scatter_traces(features, references) -> tuple[float, float]:
    """(tr(S_B), tr(S_W)) of the features (see the module docstring)."""
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(references, dtype=np.int64).reshape(-1)
    h = h.reshape(len(y), -1)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), h.shape[1]))
    np.add.at(sums, inverse, h)
    centroids = sums / counts[:, None]
    between = float((counts * ((centroids - h.mean(axis=0)) ** 2).sum(axis=1)).sum())
    within = float(((h - centroids[inverse]) ** 2).sum())
    return between, within


def feature_separability(features, references) -> float:
    """tr(S_B) / tr(S_W) with the conventions of the module docstring."""
    y = np.asarray(references, dtype=np.int64).reshape(-1)
    if y.size == 0:
        return float("nan")
    if len(np.unique(y)) == 1:
        return 0.0
    between, within = scatter_traces(features, references)
    tolerance = 1e-12 * float((np.asarray(features, dtype=np.float64) ** 2).sum())
    if between <= tolerance:
        return 0.0
    if within <= tolerance:
        return float("inf")
    return between / within


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FeatureSeparability(evaluate.Metric):
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
        return {"separability": feature_separability(features, references)}
