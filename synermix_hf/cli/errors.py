"""`UsageError`, and how the library's parameter names become command-line flags (`flag_text`; the command line's
`synermix_hf.cli.arguments.usage_error` applies it with the parser's flags).

The library raises `ValueError` / `TypeError` that name its own parameters in backticks (`val_ratio`, `image_column`,
...), which is what a Python caller wrote. The command line turns such an error into a `UsageError` whose message
names the flags instead (`--val_ratio (-vr)`, `--image_column_name`), prints it as one paragraph on stderr and exits
with status 2, without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["PARAMETER_FLAGS", "UsageError", "flag_text"]


class UsageError(ValueError):
    """The user's input cannot work (unknown name, missing directory, unreadable image, unsuitable column, ...).

    The message is complete on its own: it says what is wrong, names the flag involved and, where it helps, lists the
    valid choices. The command line prints it to stderr and exits with status 2, without a traceback.
    """


# Library parameters whose flag has another name. Every other backticked name that is a flag of the parser becomes
# that flag (with its short form); see `flag_text`.
PARAMETER_FLAGS: dict[str, str] = {
    "image_column": "image_column_name",
    "label_column": "label_column_name",
}

_BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def flag_text(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each backticked parameter name that is a flag replaced by the flag's text.

    Args:
        message: An error message of the library, parameters in backticks.
        flags: Flag name (a dataclass field) -> how to write it (`--val_ratio (-vr)`).
    """

    def replace(match: re.Match) -> str:
        name = PARAMETER_FLAGS.get(match.group(1), match.group(1))
        return flags.get(name, match.group(0))

    return _BACKTICKED.sub(replace, message)
