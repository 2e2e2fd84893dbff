"""Top-1 accuracy as an `evaluate` metric module that ships with synermix_hf and loads offline.

    import evaluate
    accuracy = evaluate.load("<path to synermix_hf>/metrics/accuracy")
    accuracy.compute(predictions=[0, 2, 1], references=[0, 1, 1])  # {"accuracy": 0.666...}
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Top-1 accuracy: the fraction of predicted class ids equal to the reference class ids."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class ids (the argmax of the logits).
    references (`list` of `int`): True class ids.
    normalize (`bool`, defaults to True): Return the fraction correct; False returns the count.
Returns:
    accuracy (`float`): In [0, 1] (or a count when `normalize=False`).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            return {"accuracy": float("nan")}
        correct = int((predictions == references).sum())
        return {"accuracy": correct / len(references) if normalize else float(correct)}
