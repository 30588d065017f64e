"""The text-only LM adapter: a tiny random Qwen2 causal LM against the library's own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from stream_agent.models.base import LanguageModel
from stream_agent.models.errors import PromptError
from stream_agent.models.records import DecodeOptions
from stream_agent.models.testing import build_tokenizer, spread_weights
from stream_agent.models.text_lm import CONTEXT_PLACEHOLDER, TextLM

CHAT = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny() -> TextLM:
    tokenizer = build_tokenizer(
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT,
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    spread_weights(model, 0)
    return TextLM(model=model, tokenizer=tokenizer)


def test_is_a_language_model_with_its_spec(tiny: TextLM) -> None:
    assert isinstance(tiny, LanguageModel)
    spec = tiny.lm_spec
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (2, 4, 2, 16)
    assert spec.rope == "1d" and spec.max_positions == 2048
    assert tiny.stop_ids == (tiny.tokenizer.eos_token_id,)


def test_prompt_puts_context_first_in_the_user_turn(tiny: TextLM) -> None:
    layout = tiny.build_prompt("Where is the cat?", system="You answer.")
    assert CONTEXT_PLACEHOLDER not in tiny.tokenizer.decode(layout.prefix_ids)
    assert tiny.tokenizer.decode(layout.prefix_ids) == (
        "<|im_start|>system\nYou answer.<|im_end|>\n<|im_start|>user\n"
    )
    assert tiny.tokenizer.decode(layout.suffix_ids) == (
        "\nWhere is the cat?<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(PromptError):
        tiny.build_prompt(f"a {CONTEXT_PLACEHOLDER} b")


def test_prefill_and_decode_equal_the_library(tiny: TextLM) -> None:
    layout = tiny.build_prompt("What happens in the video?")
    ids = [
        *layout.prefix_ids,
        *tiny.tokenizer("A person walks into the room.")["input_ids"],
        *layout.suffix_ids,
    ]
    cache = tiny.new_cache()
    logits = tiny.prefill(cache, tiny.text_chunk(ids, 0), want_logits=True)
    assert logits is not None
    with torch.no_grad():
        reference = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1]
        generated = tiny.model.generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(ids) :]
    torch.testing.assert_close(logits, reference.float(), rtol=0, atol=1e-5)
    steps = list(tiny.decode(cache, logits, len(ids), DecodeOptions(max_new_tokens=8, stop_ids=())))
    assert [s.token_id for s in steps] == generated.tolist()
