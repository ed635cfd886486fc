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
        tok.model = _canonical_unigram(tok)
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


def _canonical_unigram(tok: Any) -> Any:
    """The trained Unigram model with its scores rounded and its pieces in a fixed order.

    The trainer sums scores in a thread- and hash-dependent order, so two runs on the same texts
    differ in the last bits of a score, and pieces with near-equal scores swap ids; it also appends
    the characters it must keep in hash order, each 1e-4 below the last (down to the lowest score). A model built on each run
    then differs. Rounding to 1e-6, giving those characters (single characters within 0.01 of the
    lowest score) their scores in character order, and ordering by (score, piece) makes the ids a function of the texts alone (the demo must give
    the same numbers twice)."""
    import json

    from tokenizers import models

    vocab = json.loads(tok.to_str())["model"]["vocab"]
    specials, pieces = vocab[: len(T5_SPECIALS)], vocab[len(T5_SPECIALS) :]
    pieces = [[p, round(score, 6)] for p, score in pieces]
    lowest = min((score for _, score in pieces), default=0.0)
    kept = [i for i, (p, score) in enumerate(pieces) if len(p) == 1 and score < lowest + 0.01]
    scores = sorted((pieces[i][1] for i in kept), reverse=True)
    for i, char, score in zip(kept, sorted(pieces[i][0] for i in kept), scores):
        pieces[i] = [char, score]
    pieces.sort(key=lambda x: (-x[1], x[0]))
    return models.Unigram([tuple(x) for x in specials + pieces], unk_id=T5_SPECIALS.index("<unk>"), byte_fallback=False)


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


def tiny_bert(tokenizer: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised BERT encoder (no head: what a sentence encoder like MiniLM ships)
    sized for ``tokenizer``; ``dora train-student`` gives it a classification head."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
    return BertModel(config)


def save_model_dir(model: Any, tokenizer: Any, path: Any) -> None:
    """Save model and tokenizer as a plain Hugging Face directory."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
