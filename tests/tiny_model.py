"""A tiny random-weight Mistral-architecture model with a real tokenizer.

Built offline in the test session (well under a second): a byte-level BPE
tokenizer trained on a few sentences, and a two-layer Mistral whose weights
are random but fixed by a seed. It exercises the real loading and generation
code; its replies are gibberish, which is all the tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome.",
    "Hello! How can I help you today?",
    "Tell me a short story about a cat who learns to fly.",
    "Python is a programming language; Django is a web framework.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9. Punctuation: , . ; : ! ? ' \" ( ) [ ] { }",
    "You are a helpful assistant.",
]


def build_tiny_model(
    folder: Path, *, chat_template: bool = True, context_tokens: int = 256, seed: int = 0
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"] if chat_template else [],
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=context_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")
        if chat_template
        else tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=True,
        initializer_range=0.5,  # peaky random logits: varied tokens, not one repeated
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_endless_model(folder: Path, *, layers: int = 16) -> Path:
    """The tiny model made deeper (slower per token), with a long context, and unable to stop.

    The plain tiny model answers greedy "Hello" with ~300 tokens in a tenth of a
    second: too quick to catch mid-reply. This one never picks a special token
    (their embedding rows, which are also its output rows, are zero, so their
    logits are 0 while the largest of the others is positive), so every reply
    runs to its max_new_tokens: about 4000 tokens in 9 s on 2 cores.
    """
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    build_tiny_model(folder, context_tokens=4096)
    config = MistralConfig.from_pretrained(folder)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = MistralForCausalLM(config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.all_special_ids] = 0
    model.save_pretrained(folder)
    return folder


def greedy_reference(loaded: Any, turns: list[Any], max_new_tokens: int) -> list[int]:
    """What plain unbatched greedy generate() answers to `turns`, never stopping early:
    the tokens the engine's batched, chunked and cached paths must reproduce."""
    import torch

    from inference.prompt import build_prompt

    ids = build_prompt(
        loaded.tokenizer, turns, context_tokens=loaded.context_tokens, max_new_tokens=max_new_tokens
    ).input_ids
    with torch.inference_mode():
        output = loaded.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=loaded.tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    tokens: list[int] = output[0, len(ids) :].tolist()
    return tokens
