"""Two nodes on CPU, simulated on this machine: `torchrun --nnodes 2 --nproc_per_node 1 --node_rank {0,1}`."""

import json
import socket
import subprocess
import sys
from pathlib import Path

from test_distributed import HERE, check_one_ddp_step, launch_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_nodes(script: Path, *script_args: str, timeout: int = 300) -> list[str]:
    """Start node 0 and node 1 (one process each) as two torchrun commands, as on two machines; their outputs."""
    port = str(free_port())
    env = {**launch_env(), "CUDA_VISIBLE_DEVICES": ""}  # CPU nodes, also on a machine with a GPU
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
             str(rank), "--master_addr", "127.0.0.1", "--master_port", port, str(script), *script_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent, env=env,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=timeout)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-4000:]
    return outputs


def test_two_cpu_nodes_train_one_model_with_averaged_gradients(tmp_path):
    # No use_cpu given: on CPU nodes the arguments must still join the two processes in one job.
    node0, node1 = run_two_nodes(HERE / "ddp_one_step.py", str(tmp_path), "mixup", "loader", "auto")
    assert "process 0 of 2 done (process group of 2, parallel mode distributed)" in node0
    assert "process 1 of 2 done (process group of 2, parallel mode distributed)" in node1
    # Each node's batch is balanced, no example is in both, and the step applied the average of the two gradients.
    check_one_ddp_step(tmp_path, "loader")


def test_the_script_on_two_cpu_nodes_is_one_run_with_one_writer(tmp_path, hub_copies):
    out = tmp_path / "out"
    run_two_nodes(
        HERE.parent / "run_image_classification.py", "-ds", "cifar100", "--dataset_path", str(hub_copies["cifar100"]),
        "--image_size", "8", "-beta", "0.1", "-itrm", "Manifold_Mixup", "-bs", "8", "--max_steps", "1",
        "--dataloader_num_workers", "0",
        "--save_strategy", "no", "--output_dir", str(out), "--disable_tqdm", "true",
    )  # fmt: skip
    log = (out / "training_log.txt").read_text()
    assert log.count("[command]") == 1  # one header: only process 0 writes the log
    assert "processes                   : 2" in log and "per_device_train_batch_size : 4" in log
    assert "total train batch size      : 8 (2 processes x 4 per process" in log
    assert len([line for line in log.splitlines() if " train  loss " in line]) == 1
    card = (out / "README.md").read_text()
    assert card.count("## SynerMix") == 1 and "| total train batch size | 8 (2 processes x 4 per process" in card
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert logged and all("loss_intra" in entry and "loss_inter" in entry for entry in logged)
