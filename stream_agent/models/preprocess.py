"""Frame preprocessing with numpy and PIL, matching transformers' PIL image processors exactly.

transformers' video processors need torchvision, which cannot be installed beside the CPU torch
used here, so frames are prepared by hand. The steps and their float types are those of the
library's ``PilBackend`` (``PIL.Image.resize`` on uint8, rescale in float64 then cast to float32,
normalise in float32), so the result is bit-identical to the image processor's on the same frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from stream_agent.models.errors import IncompleteModelError, InputError
from stream_agent.models.records import FrameTransform


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise IncompleteModelError(f"image processor {name} must have 3 values, got {value!r}")
    return values[0], values[1], values[2]


def frame_transform_from_settings(settings: Mapping[str, Any]) -> FrameTransform:
    """A :class:`FrameTransform` from an image processor's resolved settings.

    ``settings`` holds the processor's attributes (``size``, ``image_mean``, ``image_std``,
    ``rescale_factor``, ``resample``, ``do_rescale``, ``do_normalize``); only a fixed
    ``{"height", "width"}`` size is supported, as in the video path of the families here.
    """
    size = settings.get("size")
    if not isinstance(size, Mapping) or not size.get("height") or not size.get("width"):
        raise IncompleteModelError(
            f"the image processor's size {size!r} is not a fixed height x width; "
            "this runtime needs one for video frames"
        )
    do_rescale = bool(settings.get("do_rescale", True))
    do_normalize = bool(settings.get("do_normalize", True))
    mean = _triple(settings.get("image_mean"), "image_mean") if do_normalize else (0.0, 0.0, 0.0)
    std = _triple(settings.get("image_std"), "image_std") if do_normalize else (1.0, 1.0, 1.0)
    resample = settings.get("resample")
    return FrameTransform(
        height=int(size["height"]),
        width=int(size["width"]),
        mean=mean,
        std=std,
        rescale_factor=float(settings.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
        resample=int(resample if resample is not None else Image.Resampling.BICUBIC),
    )


def check_frame(frame: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """``frame`` if it is an RGB uint8 ``(H, W, 3)`` array, else :class:`InputError`."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3:
        raise InputError("frames must be RGB uint8 arrays of shape (height, width, 3)")
    if frame.shape[2] != 3:
        raise InputError(f"frames must have 3 colour channels, got {frame.shape[2]}")
    return frame


def preprocess_frame(
    frame: npt.NDArray[np.uint8], transform: FrameTransform
) -> npt.NDArray[np.float32]:
    """One RGB uint8 frame ``(H, W, 3)`` -> normalised float32 ``(3, height, width)``."""
    image = Image.fromarray(check_frame(frame))
    resized = image.resize(
        (transform.width, transform.height), resample=Image.Resampling(transform.resample)
    )
    x = (np.asarray(resized).astype(np.float64) * transform.rescale_factor).astype(np.float32)
    mean = np.asarray(transform.mean, dtype=np.float32)
    std = np.asarray(transform.std, dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_frames(
    frames: Sequence[npt.NDArray[np.uint8]], transform: FrameTransform
) -> npt.NDArray[np.float32]:
    """Frames -> a float32 batch ``(F, 3, height, width)``."""
    if len(frames) == 0:
        raise InputError("no frames to preprocess")
    out = np.empty((len(frames), 3, transform.height, transform.width), dtype=np.float32)
    for i, frame in enumerate(frames):
        out[i] = preprocess_frame(frame, transform)
    return out
