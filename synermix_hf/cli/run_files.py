"""Writing the files of a run so that no write can lose the training.

A run writes more than its checkpoints: the run log as it trains, and after training the metrics (`*_results.json`),
the model card and `predictions.csv`. A full disk (or a quota, or a file-size limit) during any of them used to end
the run with a traceback, after hours of training. Here:

* `keep_going(what, path)` wraps such a write: a failure to write (`OSError`) is one warning naming the file and the
  cause, given once per file, and the run goes on. A file cut short by the failure is removed (`remove=True`), so
  nothing half-written is left for a reader to choke on.
* The metrics and the trainer state are written whole or not at all by the trainer (`StagedCheckpoints.save_metrics`,
  `save_state`: a temporary file renamed into place), since a later step reads them back (the metrics are merged
  into `all_results.json`).

The final model itself is saved complete or not at all by the trainer (`StagedCheckpoints.save_final_model`): it is
what a rerun must not take for a finished run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

__all__ = ["keep_going", "reset_warnings"]

logger = logging.getLogger("synermix_hf.cli.train")

_warned: set[str] = set()  # the files whose failed write was already told (one warning each)


def reset_warnings() -> None:
    """Forget which files were warned about (a new run in the same process warns again)."""
    _warned.clear()


def _cause(error: BaseException) -> str:
    from ..checkpoints import _disk_full_cause

    return _disk_full_cause(error) or (getattr(error, "strerror", None) or str(error) or type(error).__name__)


@contextlib.contextmanager
def keep_going(what: str, path: str | os.PathLike, remove: bool = False) -> Iterator[None]:
    """Run the write in the `with` block; if it fails (`OSError`), warn once for `path` and go on.

    Args:
        what: What the file is, for the warning ("the run log", "the evaluation metrics").
        path: The file written.
        remove: Remove `path` after a failure (what was written of it is cut short).
    """
    try:
        yield
    except OSError as error:
        if remove:
            with contextlib.suppress(OSError):
                os.remove(path)
        key = os.path.abspath(path)
        if key not in _warned:
            _warned.add(key)
            logger.warning("Could not write %s (%s): %s; the run goes on without it.", what, path, _cause(error))

