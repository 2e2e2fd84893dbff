"""Credentials (Hub tokens) never written: the arguments that carry one, and their values masked wherever a run
writes its arguments (the run log, the model card's command, `training_args.bin`, TensorBoard/W&B hparams).

An argument carries a credential when its name is `token` or ends in `_token` (`hub_token`, and whatever future
`*_token` argument transformers adds, as `TrainingArguments.to_dict` masks them), `_secret`, `_password` or
`_api_key`. Its value is written as a placeholder, `<HUB_TOKEN>`, the way transformers masks `hub_token`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["NOT_CREDENTIALS", "is_credential", "placeholder", "redact_argv", "redact_mapping"]

_CREDENTIAL_NAME = re.compile(r"(^|_)(token|secret|password|api_key)$")

# Arguments whose names mention tokens but that hold no credential (counts of text tokens): the test that walks every
# argument of TrainingArguments and of the command line fails on any other `*token*` name until it is decided here.
NOT_CREDENTIALS = frozenset({"average_tokens_across_devices", "include_num_input_tokens_seen"})


def is_credential(name: str) -> bool:
    """Whether the argument `name` carries a credential (its value is never written)."""
    return bool(_CREDENTIAL_NAME.search(name.replace("-", "_").lower()))


def placeholder(name: str) -> str:
    """What is written instead of the value of the credential argument `name`, e.g. `<HUB_TOKEN>`."""
    return f"<{name.replace('-', '_').upper()}>"


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with the value of every credential argument that is set replaced by its placeholder (nested
    mappings too)."""
    redacted: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = redact_mapping(value)
        elif is_credential(str(key)) and value is not None:
            value = placeholder(str(key))
        redacted[key] = value
    return redacted


def redact_argv(argv: Iterable[str], flag_names: Iterable[str]) -> list[str]:
    """A command line with the value of every credential flag replaced by its placeholder.

    Args:
        argv: The arguments as typed (`--hub_token hf_x`, `--hub_token=hf_x`, or an abbreviation argparse accepts,
            such as `--hub_tok hf_x`).
        flag_names: Every long flag of the command line, without dashes (`hub_token`, `beta`, ...), to resolve
            abbreviations.
    """
    names = {name.replace("-", "_") for name in flag_names}
    redacted: list[str] = []
    masked_flag: str | None = None
    for arg in argv:
        if masked_flag is not None:
            redacted.append(placeholder(masked_flag))
            masked_flag = None
            continue
        if arg.startswith("--") and len(arg) > 2:
            typed, equals, _ = arg[2:].partition("=")
            flag = _credential_flag(typed.replace("-", "_"), names)
            if flag is not None:
                if equals:
                    redacted.append(f"--{typed}={placeholder(flag)}")
                else:
                    redacted.append(arg)
                    masked_flag = flag
                continue
        redacted.append(arg)
    return redacted


def _credential_flag(typed: str, names: set[str]) -> str | None:
    """The credential flag that `typed` names: the flag itself, or one that argparse could take it to abbreviate."""
    if is_credential(typed):
        return typed
    if typed in names:
        return None
    return next((name for name in sorted(names) if name.startswith(typed) and is_credential(name)), None)
