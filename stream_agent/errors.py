"""The daemon's exception hierarchy.

Every error a user can cause or meet derives from :class:`StreamAgentError`; the CLI prints its
message (one sentence that says what to do) and exits with its ``exit_code``, and the servers map
its ``code`` to the protocol's error codes. Errors raised by the leaf packages (``ingest``,
``cacher``, ``pruner``) are wrapped into these at the boundary.
"""

from __future__ import annotations


class StreamAgentError(Exception):
    """Base of all errors the daemon reports to a user."""

    code = "internal"
    exit_code = 1


class ConfigError(StreamAgentError):
    """The configuration (file or flags) is invalid."""

    code = "bad_config"
    exit_code = 2


class SourceError(StreamAgentError):
    """A video source cannot be opened or read (wraps ``ingest.errors.IngestError``)."""

    code = "bad_source"
    exit_code = 3


class ModelError(StreamAgentError):
    """A model cannot be loaded or is not of a supported family."""

    code = "bad_model"
    exit_code = 4
