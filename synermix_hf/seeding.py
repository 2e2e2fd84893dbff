"""Counter-based seeds: each random draw is a pure function of a few integers, never of what was drawn before.

`step_generators(seed, step, micro_step, process_index)` gives the random sources of one training micro-step (the
mixing draws of the loss). `example_seeds(seed, epoch, positions)` gives every example *appearance* of an epoch its own 64-bit seed. The
position is the example's place in the epoch's sequence of loaded examples (see `PositionedBatchSampler`), not its
dataset index, so an example that the balanced sampler loads twice in an epoch (a partner) is augmented
independently each time, as in the reference loop, while a resumed run or a run on more processes still draws the
same augmentation for the same appearance.

The hash is splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), applied
once per input word: a few integer operations per example, vectorised over a batch, where
`numpy.random.SeedSequence` costs tens of microseconds per example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["example_seeds", "seeded_in_turn", "splitmix64", "step_generators"]

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray | Sequence[int] | int) -> np.ndarray:
    """The splitmix64 output function of `values + golden gamma`, elementwise, as a `uint64` array (wraps mod 2**64)."""
    z = np.array(values, dtype=np.uint64, ndmin=1) + _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def example_seeds(seed: int, epoch: int, positions: np.ndarray | Sequence[int]) -> np.ndarray:
    """One 64-bit seed per example appearance, a hash of `(seed, epoch, position)`.

    Args:
        seed: The run's base seed (any int; negative values wrap mod 2**64).
        epoch: The epoch (0-based).
        positions: Each appearance's place in the epoch's sequence of loaded examples.

    Returns:
        A `uint64` array shaped like `positions`.
    """
    key = splitmix64(splitmix64(int(seed) & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(int(epoch) & 0xFFFFFFFFFFFFFFFF))
    positions = np.asarray(positions, dtype=np.uint64)
    return splitmix64(key ^ positions.reshape(-1)).reshape(positions.shape)


def seeded_in_turn(seeds: np.ndarray) -> Iterator[int]:
    """Seed torch's CPU generator from each of `seeds` (uint64) in turn, yielding its position, and restore the
    generator after: torchvision's random transforms, run for example `i` in the loop body, then draw from `seeds[i]`
    alone.

    Only the CPU generator: `torch.manual_seed` would also seed every CUDA (and MPS/XPU/MTIA) generator: slow on a
    machine without CUDA (BENCHMARKS.md, section 3), and, where CUDA is initialised, a reseeding of the model's CUDA
    generator that `fork_rng(devices=[])` does not undo.
    """
    with torch.random.fork_rng(devices=[]):
        for position, seed in enumerate(np.asarray(seeds, dtype=np.uint64).reshape(-1)):
            torch.default_generator.manual_seed(int(seed >> np.uint64(1)))
            yield position


def step_generators(
    seed: int, step: int, micro_step: int, process_index: int, device: torch.device | str = "cpu"
) -> tuple[torch.Generator, np.random.Generator]:
    """The random sources of one training micro-step, seeded by `(seed, step, micro_step, process_index)`.

    Returns:
        `(generator, rng)`: a `torch.Generator` on `device` for tensor draws (intra-class weights, permutation) and a
        `numpy.random.Generator` for scalar draws (lambda, CutMix box, Manifold MixUp point).
    """
    torch_seed, numpy_seed = np.random.SeedSequence([seed, step, micro_step, process_index]).spawn(2)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch_seed.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return generator, np.random.default_rng(numpy_seed)
