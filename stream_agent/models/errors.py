"""Errors of the model runtime, all :class:`~stream_agent.errors.ModelError` subclasses.

Each message says what the user should do; the CLI prints it and exits with ``ModelError``'s code.
"""

from __future__ import annotations

from stream_agent.errors import ModelError


class ModelNotFoundError(ModelError):
    """The model source is neither a local folder nor a Hugging Face id that could be fetched."""


class NotAModelError(ModelError):
    """The folder exists but holds no model (no or unreadable ``config.json``)."""


class UnsupportedFamilyError(ModelError):
    """The folder holds a model of a family this runtime has no adapter for."""


class WrongFamilyError(ModelError):
    """The folder holds a model of another family than the one asked for."""


class IncompleteModelError(ModelError):
    """A model folder lacks a part the runtime needs (tokenizer, image processor, chat template)."""


class PromptError(ModelError):
    """A prompt cannot be built with the checkpoint's chat template."""


class InputError(ModelError):
    """Inputs given to the model have the wrong shape, type or size."""


class DeviceError(ModelError):
    """The device or dtype asked for cannot be used here."""


class ModelUnavailableError(ModelError):
    """The configured model cannot be loaded; the message says how to point at one that can."""
