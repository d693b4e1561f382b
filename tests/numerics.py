"""How the tests compare numbers, and where their random inputs come from.

* Weights -- tensors ckptfix copies, renames, slices, pads or transposes -- are compared exactly
  (``torch.equal`` / ``np.testing.assert_array_equal``): moving bytes never changes them.
* Outputs of layers are compared with a stated tolerance (``assert_outputs_close``). A matmul or
  convolution kernel picks its blocking and accumulation order from the shapes (and the CPU), so
  ``Linear(32->5)`` and the first five rows of ``Linear(32->10)``, or a 10- and a 15-channel conv,
  round the same dot products differently: on a 2-core CI machine 123 of 200 random inputs differed
  in the last bits (issue 10). Bitwise equality of outputs is not a property torch promises.
* Every random input is seeded (``seeded_randn``), so a failure replays.
"""

from __future__ import annotations

import torch

# float32 outputs of O(1) size from sums of at most a few thousand products: a different
# accumulation order moves them by a few ulps (~1e-7). torch's own float32 defaults leave a margin
# of ~100x, and stay far below what a wrong conversion changes (the weights' scale, ~1e-1).
OUTPUT_RTOL = 1.3e-6
OUTPUT_ATOL = 1e-5


def seeded_randn(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """A reproducible standard-normal input (its own generator: the global RNG is left alone)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_outputs_close(actual: torch.Tensor, expected: torch.Tensor, msg: str | None = None) -> None:
    """Outputs of two models (or of differently shaped layers) agree up to rounding."""
    torch.testing.assert_close(actual, expected, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL, msg=msg)


def outputs_differ(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """The opposite check: a wrong conversion misses by far more than rounding."""
    return not torch.allclose(actual, expected, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL)


def assert_same_weights(actual: dict, expected: dict) -> None:
    """Two state dicts hold the same tensors, bit for bit."""
    assert actual.keys() == expected.keys(), sorted(set(actual) ^ set(expected))
    for k in expected:
        assert actual[k].dtype == expected[k].dtype and torch.equal(actual[k], expected[k]), k
