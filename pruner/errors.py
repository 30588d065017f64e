"""The pruner's exception hierarchy.

Everything the pruner raises on purpose derives from :class:`PrunerError`, so the daemon can wrap
it into its own errors at the boundary (``stream_agent`` maps :class:`ConfigurationError` to its
``ConfigError``). Each message says what to change.

- :class:`ConfigurationError` (also a ``ValueError``): an unknown method, an out-of-range option or
  an inconsistent combination, found when the config record is built.
- :class:`BudgetError`: a budget given in tokens that a method cannot honour for the frames it
  actually receives (known only once the first frame's token count is seen).
- :class:`FrameError` (also a ``ValueError``): a frame that cannot be pruned as given (not a 2-D
  float tensor, a grid that does not match the token count, non-finite values, a timestamp that
  goes backwards).
- :class:`ShapeChangedError`: a frame whose grid, channel count, dtype or device differs from the
  stream's earlier frames while the config says ``on_shape_change="raise"``.
"""

from __future__ import annotations


class PrunerError(Exception):
    """Base of every error the pruner raises on purpose."""


class ConfigurationError(PrunerError, ValueError):
    """The pruner configuration is invalid; the message names the field and its allowed range."""


class BudgetError(ConfigurationError):
    """The token budget cannot be met by the chosen method for this stream's frames."""


class FrameError(PrunerError, ValueError):
    """A frame's tokens, grid, saliency or timestamp are not usable."""


class ShapeChangedError(FrameError):
    """A frame does not match the stream's earlier frames (grid, channels, dtype or device).

    Call ``flush()`` and ``reset()`` on the pruner when the source changes (the daemon does this
    on reconnect), or configure ``on_shape_change="reset"`` to have the pruner do it itself.
    """
