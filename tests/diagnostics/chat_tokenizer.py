"""A word-level Hugging Face tokenizer with a Jinja chat template, built here (no download), for the tests that
check how a real chat template splits prompts from answers."""

from __future__ import annotations


def chat_tokenizer(words: list[str]):
    """`words` become the vocabulary in order (the first is pad and unknown, the second eos); each message
    renders as `<|role|> content`, an assistant's followed by `<eos>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=words[0], eos_token=words[1])
    hf.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
                        "{% if m['role'] == 'assistant' %} <eos>{% endif %} {% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    return hf
