"""Tokenizers and small models built from configs, for when no pretrained weights can be had.

The demo and the tests use these (no model hub is reachable there); they are also handy for
trying dora on your own data before paying for a real teacher.

>>> tok = train_tokenizer(["a claim about cats", "another claim"] * 50, vocab_size=60, kind="t5")
>>> model = tiny_t5(tok, d_model=32, layers=1)
>>> model.config.vocab_size == len(tok)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1000, kind: Literal["t5", "llama"] = "t5") -> Any:
    """Train a Unigram (``t5``: SentencePiece-style, ``▁`` word marks) or byte-level BPE
    (``llama``: ``Ġ`` marks, BOS/EOS) tokenizer and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "t5":
        from transformers import T5Tokenizer

        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=T5_SPECIALS,
                                                               unk_token="<unk>"))
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
        return T5Tokenizer(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)

    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_t5(tokenizer: Any, *, d_model: int = 64, layers: int = 2, heads: int = 4, d_ff: int | None = None,
            seed: int = 0) -> Any:
    """A randomly initialised T5 (v1.1 style: gated GELU, untied head) sized for ``tokenizer``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=d_ff or 4 * d_model,
        num_layers=layers, num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


def tiny_llama(tokenizer: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised Llama sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def save_model_dir(model: Any, tokenizer: Any, path: Any) -> None:
    """Save model and tokenizer as a plain Hugging Face directory."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
