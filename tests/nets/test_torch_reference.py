"""The PyTorch restatement of the reference (tests/torch_reference.py) checks itself: layout, taps, checkpoint keys."""

from tests.torch_reference import self_check


def test_torch_reference_self_check():
    self_check()
