"""Frames the pipeline tests feed: a fixed texture with a square that moves with ``index``."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def moving_square(
    index: int, *, step: int = 4, size: tuple[int, int] = (96, 128)
) -> npt.NDArray[np.uint8]:
    """A textured RGB frame with a magenta square ``step * index`` pixels right of column 10."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    picture = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], axis=-1)
    left = 10 + step * index
    picture[20:50, left : left + 30] = (250, 30, 200)
    return picture.astype(np.uint8)
