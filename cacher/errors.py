"""The cacher's exception hierarchy.

Everything the cacher raises on purpose derives from :class:`CacherError`, so the daemon can wrap
it into its own errors at the boundary (``ConfigurationError`` maps to the daemon's config error,
the rest to a model error). Each message says what to change.

::

    CacherError                 base of everything below
    ├── ConfigurationError      (also ValueError) a CacherConfig / AdaptiveOptions field is out of
    │                           range or of the wrong type, or a mapping has unknown keys
    ├── EncoderError            (also ValueError) the layer records given to a cacher do not form
    │                           one encoder: none at all, different widths, a kept hidden-state
    │                           index out of range, a group size that does not divide the tokens
    └── FrameError              (also ValueError) a frame that cannot be encoded as given: not
                                ``(N, D)`` / ``(1, N, D)``, a width other than the encoder's, a
                                dtype or device other than the weights', non-finite values, rotary
                                angles or a mask that do not match the token count.
                                The stream's cached reference is dropped before it is raised, so
                                the next good frame starts afresh and frames are never mixed.

A frame with another token count (another resolution) than the cached reference is *not* an
error: the cacher drops the reference and encodes the frame in full as the new reference (its
statistics say ``refresh_reason == "shape"``).

The layer records themselves are validated by :mod:`cacher.layers` when they are built
(:class:`cacher.layers.LayerSpecError`, a ``ValueError``).
"""

from __future__ import annotations


class CacherError(Exception):
    """Base of every error the cacher raises on purpose."""


class ConfigurationError(CacherError, ValueError):
    """The cacher configuration is invalid; the message names the field and its allowed values."""


class EncoderError(CacherError, ValueError):
    """The encoder layers (or the hidden states asked of them) cannot be cached as given."""


class FrameError(CacherError, ValueError):
    """A frame's patch embeddings, rotary angles or mask cannot be encoded.

    The stream's cache has been reset when this is raised.
    """
