"""Tiny random HF models saved to local directories (no network): BERT, Llama, T5.

Each ``save_tiny_*`` writes ``config.json`` + ``model.safetensors`` + a fast tokenizer into a
directory, so ``muonft.models.hf.load_hf("hf:<dir>")`` and the fine-tuning engine can load it
exactly like a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("the", "a", "movie", "film", "great", "awful", "good", "bad", "fun", "boring", "love",
         "hate", "plot", "acting", "best", "worst", "and", "or", "is", "was", "not", "very",
         "lord", "god", "said", "unto", "shepherd", "want",)


def _word_tokenizer(special: list[str], unk: str):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate([*special, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def save_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer BERT (hidden 32) with a word-level tokenizer; [PAD] = 0, [CLS], [SEP]."""
    from tokenizers import processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    inner = _word_tokenizer(special, "[UNK]")
    inner.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    cfg = BertConfig(vocab_size=len(special) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                     pad_token_id=0)
    BertModel(cfg).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                            model_max_length=64).save_pretrained(path)
    return Path(path)


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32, tied embeddings) with a word-level tokenizer; eos = 1."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    special = ["<unk>", "<eos>"]
    inner = _word_tokenizer(special, "<unk>")
    cfg = LlamaConfig(vocab_size=len(special) + len(WORDS), hidden_size=32,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=1, bos_token_id=None,
                      pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", eos_token="<eos>"
                            ).save_pretrained(path)
    return Path(path)


def save_tiny_t5(path: Path, seed: int = 0) -> Path:
    """A 1-layer T5 (d_model 32), weights only."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                   decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    return Path(path)
