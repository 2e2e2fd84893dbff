"""`UsageError`: a mistake in what the user asked for, reported as one short paragraph without a traceback."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """The user's input cannot work (unknown name, missing directory, unreadable image, unsuitable column, ...).

    The message is complete on its own: it says what is wrong, names the flag involved and, where it helps, lists the
    valid choices. `run_image_classification.py` prints it to stderr and exits with status 2, without a traceback.
    It is a `ValueError`, so code that calls the library directly can catch it as one.
    """
