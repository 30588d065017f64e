"""JPEG encoding of frames, for the camera board's snapshots and the memory's evidence frames.

Pillow and numpy only, so that every part (the board, the memory, the alerts) can use it.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image


def encode_jpeg(
    image: npt.NDArray[np.uint8], *, max_side: int | None = None, quality: int = 85
) -> bytes:
    """RGB ``uint8`` (H, W, 3) -> JPEG bytes, downscaled so the longer side is ``max_side``."""
    picture = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if max_side is not None and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()
