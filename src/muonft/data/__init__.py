"""Offline corpora, the BPE tokenizer, token streams and deterministic batching.

```python
from muonft.data import get_tokenizer, load_lm_splits, LMBatcher
tok = get_tokenizer(vocab_size=4096)
splits = load_lm_splits("kjv", tok)          # .train / .val / .heldout uint16 memmaps
x, y = LMBatcher(splits.train, block_size=128, batch_size=16, seed=0).get(step)
```
"""

from muonft.cache import cache_dir
from muonft.data.corpora import (
    DEFAULT_FETCH,
    SOURCES,
    SPLITS,
    corpus_path,
    documents,
    fetch,
    load_rt_classification,
    split_documents,
)
from muonft.data.tokens import (
    LMBatcher,
    LMSplits,
    Tokenizer,
    eval_batches,
    get_tokenizer,
    load_lm_splits,
    load_tokens,
)

__all__ = [
    "DEFAULT_FETCH",
    "SOURCES",
    "SPLITS",
    "LMBatcher",
    "LMSplits",
    "Tokenizer",
    "cache_dir",
    "corpus_path",
    "documents",
    "eval_batches",
    "fetch",
    "get_tokenizer",
    "load_lm_splits",
    "load_rt_classification",
    "load_tokens",
    "split_documents",
]
