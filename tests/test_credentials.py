"""No credential is written: a Hub token given to the command line or the arguments appears in no file of the output
folder (checkpoints included), on no console line, in no pickled or logged arguments."""

import copy
import dataclasses
import pickle
import typing

import pytest
import torch
from transformers import TrainingArguments

from synermix_hf import SynerMixTrainingArguments
from synermix_hf.cli.arguments import DATACLASS_TYPES, flag_names
from synermix_hf.credentials import NOT_CREDENTIALS, is_credential, redact_argv

HUB_TOKEN = "hf_hubSecretValue1234"
TOKEN = "hf_tokenSecretValue5678"


def test_no_token_in_any_file_of_the_run_or_on_the_console(script_in_process, tmp_path, capfd):
    out = tmp_path / "run"
    status = script_in_process(["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
                                "--hub_tok", HUB_TOKEN, f"--token={TOKEN}", "--do_train", "--do_eval", "--do_predict",
                                "--output_dir", out])
    console = capfd.readouterr()
    assert status == 0, console.err
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.parent.name.startswith("checkpoint-") for path in files)  # checkpoints were written and read
    assert {"README.md", "training_log.txt", "training_args.bin", "synermix_run.json"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        assert HUB_TOKEN.encode() not in data and TOKEN.encode() not in data, path
    for text in (console.out, console.err):
        assert HUB_TOKEN not in text and TOKEN not in text
    # The command stays readable, with placeholders where the values were.
    card = (out / "README.md").read_text()
    assert "--hub_tok '<HUB_TOKEN>'" in card and "'--token=<TOKEN>'" in card
    # A loaded training_args.bin has no token (the logged-in one applies), not the placeholder.
    for path in out.rglob("training_args.bin"):
        assert torch.load(path, weights_only=False).hub_token is None


def test_arguments_keep_the_token_in_memory_and_mask_it_when_written(tmp_path):
    args = SynerMixTrainingArguments(output_dir=str(tmp_path), hub_token=HUB_TOKEN, use_cpu=True)
    assert copy.deepcopy(args).hub_token == HUB_TOKEN and copy.copy(args).hub_token == HUB_TOKEN
    assert args.hub_token == HUB_TOKEN  # pickling did not change the object
    written = pickle.dumps(args)
    assert HUB_TOKEN.encode() not in written
    assert pickle.loads(written).hub_token is None
    for view in (args.to_dict(), args.to_sanitized_dict(), args.to_json_string(), str(args)):
        assert HUB_TOKEN not in str(view)  # the run log, TensorBoard's and W&B's hparams, the console


@pytest.mark.parametrize("argv, expected", [
    (["--hub_token", "x", "--beta", "0.1"], ["--hub_token", "<HUB_TOKEN>", "--beta", "0.1"]),
    (["--hub-token=x"], ["--hub-token=<HUB_TOKEN>"]),
    (["--hub_to", "x"], ["--hub_to", "<HUB_TOKEN>"]),  # an abbreviation argparse accepts
    (["--token", "x", "--tokenizer", "y"], ["--token", "<TOKEN>", "--tokenizer", "y"]),
    (["--beta", "0.1", "-bs", "8"], ["--beta", "0.1", "-bs", "8"]),
])
def test_credential_flags_are_masked_in_a_command_line(argv, expected):
    assert redact_argv(argv, flag_names()) == expected


def _can_hold_text(dataclass_field: dataclasses.Field, hints: dict[str, typing.Any]) -> bool:
    hint = hints[dataclass_field.name]
    return hint is str or str in typing.get_args(hint)


def test_every_argument_named_like_a_token_is_decided():
    """A future `*token*` argument of transformers or of the command line that holds text is either masked or listed
    as no credential: the suite fails until someone decides."""
    undecided = []
    for dtype in (TrainingArguments, *DATACLASS_TYPES):
        hints = typing.get_type_hints(dtype)
        for dataclass_field in dataclasses.fields(dtype):
            name = dataclass_field.name
            if "token" in name and not is_credential(name) and name not in NOT_CREDENTIALS \
                    and _can_hold_text(dataclass_field, hints):
                undecided.append(f"{dtype.__name__}.{name}")
    assert not undecided
    assert is_credential("hub_token") and is_credential("token") and not is_credential("average_tokens_across_devices")
