"""Errors of the KV memory, all :class:`~stream_agent.errors.StreamAgentError` subclasses.

Each message says what the user should do. ``code`` is what the servers report to a client.
"""

from __future__ import annotations

from stream_agent.errors import ConfigError, StreamAgentError


class KVMemoryError(StreamAgentError):
    """Base of every error the memory raises."""


class MemoryConfigError(KVMemoryError, ConfigError):
    """The memory options are invalid or do not fit the model (window, positions, budgets)."""


class StoreError(KVMemoryError):
    """The on-disk store cannot be opened, read or written (permissions, full disk)."""


class StoreMismatchError(StoreError):
    """The store was written by another model or with another layout; its KV is meaningless here."""


class CorruptBlockError(StoreError):
    """A stored block's bytes fail their checksum or are missing (the block is dropped).

    ``block`` is the index record of the block (a ``BlockMeta``) when one block is at fault;
    None when a whole segment file cannot be opened."""

    def __init__(self, message: str, block: object | None = None) -> None:
        super().__init__(message)
        self.block = block


class UnknownStreamError(KVMemoryError):
    """A question names a stream the memory has never seen."""

    code = "unknown_camera"


class QuestionError(KVMemoryError):
    """A question cannot be answered as asked (empty text, reversed time range)."""

    code = "bad_request"


class PositionBudgetError(KVMemoryError):
    """The assembled context would need more positions than the model was trained on."""


class MemoryClosedError(KVMemoryError):
    """The memory was closed; create a new one over the same store to continue."""
