"""The GEMM floor (``mmfusion.bench.floor``) counts the products an exact training step needs, no more, no fewer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmfusion.bench.floor import lstm_gemms, model_gemms
from mmfusion.models.subnets import lstm_scan


def _flops(gemms) -> int:
    return sum(2 * m * k * n * c for (m, k, n), c in gemms.items())


@pytest.mark.parametrize("input_grad", [False, True])
def test_lstm_floor_is_what_an_exact_lstm_step_multiplies(input_grad: bool) -> None:
    """Our hand-written LSTM (forward + BPTT) multiplies exactly the floor's products plus three it could skip with
    h_0 = 0 (the first recurrent product, its gradient, and the h_0 row of dW_hh): 3 x 2 B 4H H."""
    b, t, d, h = 4, 7, 24, 5
    torch.manual_seed(0)
    lstm = nn.LSTM(d, h, batch_first=True)
    x = torch.randn(b, t, d, requires_grad=input_grad)
    with FlopCounterMode(display=False) as fc:
        _, last = lstm_scan(lstm, x, None)
        last.sum().backward()
    assert fc.get_total_flops() == _flops(lstm_gemms(b, t, d, h, input_grad)) + 3 * 2 * b * 4 * h * h


def test_ef_lstm_floor_matches_its_closed_form() -> None:
    """MMSA's EF-LSTM (4 x 128 at MOSI): forward 2 B T 4H (D_l + H) per layer (less h_0), backward twice that,
    less layer 0's input gradient (the BatchNorm's affine gradient can be had without it)."""
    pytest.importorskip("MMSA")
    b, t, h, d = 32, 50, 128, 300 + 74 + 47
    g = model_gemms("ef_lstm", "mosi", b, t)
    lstm = 0
    for layer in range(4):
        dl = d if layer == 0 else h
        fwd = 2 * b * t * 4 * h * dl + 2 * b * (t - 1) * 4 * h * h
        lstm += 3 * fwd - (2 * b * t * 4 * h * dl if layer == 0 else 0)
    head = 3 * 2 * b * h * h + 3 * 2 * b * h
    assert _flops(g) == lstm + head
