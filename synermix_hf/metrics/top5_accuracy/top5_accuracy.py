"""Top-k accuracy (k = 5 by default) as an `evaluate` metric module that ships with synermix_hf and loads offline.

    import evaluate
    top5 = evaluate.load("<path to synermix_hf>/metrics/top5_accuracy")
    top5.compute(predictions=logits, references=labels)  # {"top5_accuracy": ...}

`predictions` are the scores of every class (logits or probabilities), one row per example.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-k accuracy: the fraction of examples whose true class is among the k highest-scoring classes."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): Class scores, shape [N, num_classes].
    references (`list` of `int`): True class ids.
    k (`int`, defaults to 5): How many of the highest scores count as a hit.
Returns:
    top5_accuracy (`float`): In [0, 1]. The key says 5 whatever `k` is; `k >= num_classes` gives 1.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Top5Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=5):
        scores = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            return {"top5_accuracy": float("nan")}
        k = min(int(k), scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits = (top == references[:, None]).any(axis=1)
        return {"top5_accuracy": float(hits.mean())}
