"""Fast checks of the Hugging Face Hub before anything slow starts: is it reachable, is it a Hub id at all.

Without them, a machine without network spends about a minute in retries before `datasets` or `transformers` gives
up, and `push_to_hub` fails only after training.
"""

from __future__ import annotations

import os

__all__ = ["hub_endpoint", "hub_offline", "hub_unreachable_reason", "is_hub_id"]

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Offline mode is on (`HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE`): the libraries read only their caches."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def is_hub_id(path: str) -> bool:
    """`path` names something on the Hub (not a local file or directory)."""
    expanded = os.path.expanduser(path)
    return not os.path.exists(expanded) and not path.startswith((".", "/", "~"))


def hub_unreachable_reason(timeout: float = 5.0) -> str | None:
    """None when the Hub answers an HTTP request within `timeout` seconds, else why not, in a few words.

    Any HTTP answer counts as reachable (the proxy settings of the environment apply, as for the libraries).
    """
    import urllib.error
    import urllib.request

    endpoint = hub_endpoint()
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an answer, whatever its status
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"no answer from {endpoint} within {timeout:g} s"
        return f"{endpoint}: {reason}"
    return None
