"""The per-period masks the tracker keeps at a bit a pixel read back as the masks they were."""

from __future__ import annotations

import numpy as np
import pytest

from changedet.core.bits import PackedMask


@pytest.mark.parametrize("size", [1, 7, 8, 9, 1000, 4099])
def test_a_packed_mask_reads_back_at_any_pixels(size: int) -> None:
    rng = np.random.default_rng(size)
    mask = rng.random(size) < 0.3
    packed = PackedMask.of(mask)
    assert packed.bits.nbytes == (size + 7) // 8  # a bit a pixel
    assert np.array_equal(packed.unpacked(), mask)
    picked = rng.integers(0, size, 3 * size)
    assert np.array_equal(packed[picked], mask[picked])
    assert packed[np.array([], dtype=np.int64)].shape == (0,)
    assert packed.mean() == pytest.approx(mask.mean())


def test_a_packed_mask_is_flat_and_refuses_pixels_past_its_end() -> None:
    grid_mask = np.zeros((3, 5), dtype=bool)
    grid_mask[1, 4] = grid_mask[2, 0] = True
    packed = PackedMask.of(grid_mask)
    assert packed[np.array([9, 10, 0])].tolist() == [True, True, False]
    assert packed.mean() == pytest.approx(2 / 15)
    with pytest.raises(IndexError):
        packed[np.array([15])]
    with pytest.raises(IndexError):
        packed[np.array([-1])]
