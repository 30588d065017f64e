"""Prompt layout from the checkpoint's chat template, and streaming detokenisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stream_agent.models.errors import IncompleteModelError, PromptError
from stream_agent.models.records import PromptLayout

_PROBE_QUESTIONS = ("first probe question", "second probe question")


def load_chat_template(folder: Path, tokenizer: Any) -> str:
    """The chat template that renders video content: the processor's if the folder has one.

    Checkpoints keep the multimodal template in ``chat_template.json`` (older processors) or
    ``chat_template.jinja`` (which the tokenizer also loads); ``tokenizer_config.json`` may hold a
    text-only template, used only when nothing else exists.
    """
    legacy = folder / "chat_template.json"
    if legacy.is_file():
        try:
            template = json.loads(legacy.read_text(encoding="utf-8"))["chat_template"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IncompleteModelError(
                f"{legacy} is not a valid chat template file: {exc}"
            ) from exc
        if isinstance(template, str) and template:
            return template
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise IncompleteModelError(
        f"{folder} has no chat template (chat_template.json, chat_template.jinja or one in "
        "tokenizer_config.json); copy the model's template files into the folder"
    )


def _render(tokenizer: Any, template: str, question: str, system: str | None, media: str) -> str:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append(
        {"role": "user", "content": [{"type": media}, {"type": "text", "text": question}]}
    )
    return render_chat(tokenizer, template, messages)


def render_chat(tokenizer: Any, template: str, messages: list[dict[str, Any]]) -> str:
    """``messages`` through the chat ``template``, ending with the assistant's turn opened."""
    try:
        text = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # jinja errors come in many types; all mean the same to the user
        raise PromptError(f"the checkpoint's chat template failed to render: {exc}") from exc
    if not isinstance(text, str):
        raise PromptError("the checkpoint's chat template did not render to text")
    return text


def build_prompt_layout(
    tokenizer: Any,
    template: str,
    question: str,
    placeholder: str,
    *,
    system: str | None = None,
    media: str = "video",
) -> PromptLayout:
    """Render a one-video chat prompt and split it at the video placeholder.

    The template must render the ``{"type": media}`` content item as exactly one ``placeholder``
    and put the question after it, so that the prefix is the same for every question.
    """
    if placeholder in question or (system is not None and placeholder in system):
        raise PromptError(f"the question must not contain the video placeholder {placeholder!r}")
    text = _render(tokenizer, template, question, system, media)
    if text.count(placeholder) != 1:
        raise PromptError(
            f"the chat template rendered {text.count(placeholder)} video placeholders "
            f"{placeholder!r}, expected exactly one"
        )
    prefix, suffix = text.split(placeholder)
    probes = [_render(tokenizer, template, q, system, media) for q in _PROBE_QUESTIONS]
    if any(p.split(placeholder)[0] != prefix for p in probes):
        raise PromptError(
            "the chat template puts text that depends on the question before the video; "
            "streaming needs the question after the video"
        )

    def ids(part: str) -> tuple[int, ...]:
        return tuple(int(i) for i in tokenizer(part, add_special_tokens=False)["input_ids"])

    return PromptLayout(prefix_ids=ids(prefix), suffix_ids=ids(suffix), text=text)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    It decodes the whole answer each time (answers are short) and holds back a trailing U+FFFD,
    which means the last token ended inside a multi-byte character.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    @property
    def text(self) -> str:
        return self._emitted

    def push(self, token_id: int | None, *, final: bool = False) -> str:
        """Add ``token_id`` (None adds nothing) and return the new text; ``final`` flushes all."""
        if token_id is not None:
            self._ids.append(token_id)
        full: str = self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if not final and full.endswith("\ufffd"):
            return ""
        # Byte-level decoding only appends; should a tokenizer ever rewrite earlier text, the
        # answer already streamed stands and only the part beyond it is emitted.
        delta = full[len(self._emitted) :]
        self._emitted += delta
        return delta
