"""The model card (README.md of the output directory) and the Hub checks of `--push_to_hub`.

The card is the Trainer's (`Trainer.create_model_card`: base model, dataset, hyperparameters, results per epoch,
framework versions), with a SynerMix section added (`SynerMixTrainer.model_card_section`): the method's settings, the
final metrics and the command. The Trainer writes the card again when it pushes, so the section is added whenever it
writes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hub import hub_offline, hub_unreachable_reason
from .errors import UsageError

__all__ = ["check_hub_access", "synermix_section"]


def synermix_section(settings: Mapping[str, Any], metrics: Mapping[str, Any], command: str,
                     chosen: Mapping[str, str] | None = None) -> str:
    """Markdown for the card: the SynerMix settings, the values chosen for the run (`chosen`: name -> "value
    (reason)"), the final metrics and the command that trained the model."""
    lines = ["", "## SynerMix", "",
             "Trained with SynerMix (arXiv:2403.14137): the loss is `beta * L_intra + (1 - beta) * L_inter`, an "
             "intra-class mixup of the penultimate features of unaugmented images plus an inter-class mixup of the "
             "augmented ones.", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in settings.items()]
    if chosen:
        lines += ["", "### Chosen for this run", "", "Values the command did not give, chosen for this machine and run:",
                  "", "| argument | value (why) |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in chosen.items()]
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not k.endswith(("_per_second",
                                                                                                   "runtime"))}
    if shown:
        lines += ["", "### Final metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                  for key, value in shown.items()]
    lines += ["", "### Command", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def check_hub_access(args: Any, token: str | None = None) -> None:
    """Before training: can this run push to the Hub at the end (`--push_to_hub`)?

    Raises:
        UsageError: offline mode, no answer from the Hub, or no valid token.
    """
    if hub_offline():
        raise UsageError("--push_to_hub needs the Hugging Face Hub, and offline mode is on (HF_HUB_OFFLINE). Unset it, "
                         "or leave out --push_to_hub.")
    reason = hub_unreachable_reason()
    if reason is not None:
        raise UsageError(f"--push_to_hub: cannot reach the Hugging Face Hub ({reason}). Check the connection, or "
                         "leave out --push_to_hub.")
    from huggingface_hub import whoami

    try:
        whoami(token=args.hub_token or token)
    except Exception as error:  # noqa: BLE001 - any failure means no push at the end
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UsageError(f"--push_to_hub: no valid Hub token ({text}). Log in with `hf auth login` or give "
                         "--hub_token.") from error
