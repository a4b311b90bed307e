import numpy as np
import pytest
import torch

from muonft.data import LMBatcher, eval_batches, get_tokenizer, load_lm_splits


@pytest.fixture
def text_corpus(tmp_path, tmp_cache):
    rng = np.random.default_rng(0)
    words = ["the", "lord", "said", "unto", "moses", "and", "it", "was", "good", "light"]
    paras = [" ".join(rng.choice(words, size=40)) + "." for _ in range(60)]
    f = tmp_path / "corpus.txt"
    f.write_text("\n\n".join(paras))
    return f"file:{f}"


def test_tokenizer_roundtrip_and_cache(text_corpus):
    tok = get_tokenizer(vocab_size=300, corpus=text_corpus)
    s = "the lord said unto moses: it was good."
    assert tok.decode(tok.encode(s)) == s
    assert tok.vocab_size <= 300 and tok.eos_id >= 0
    again = get_tokenizer(vocab_size=300, corpus=text_corpus)
    assert again.key == tok.key  # loaded from the cache, same file


def test_token_streams_and_batcher(text_corpus):
    tok = get_tokenizer(vocab_size=300, corpus=text_corpus)
    sp = load_lm_splits(text_corpus, tok)
    assert sp.train.dtype == np.uint16 and len(sp.train) > len(sp.val) > 0
    assert (np.asarray(sp.train) == tok.eos_id).sum() >= 1
    b = LMBatcher(sp.train, block_size=16, batch_size=4, seed=3)
    x, y = b.get(7)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    x2, _ = LMBatcher(sp.train, block_size=16, batch_size=4, seed=3).get(7)
    assert torch.equal(x, x2)  # pure function of (seed, step)
    assert not torch.equal(x, b.get(8)[0])
    batches = list(eval_batches(sp.val, 8, 3))
    assert batches and all(torch.equal(bx[:, 1:], by[:, :-1]) for bx, by in batches)
    first = torch.from_numpy(np.asarray(sp.val[:8], dtype=np.int64))
    assert torch.equal(batches[0][0][0], first)


def test_bad_sizes(text_corpus):
    with pytest.raises(ValueError, match="vocab_size must be in"):
        get_tokenizer(vocab_size=10, corpus=text_corpus)
    with pytest.raises(ValueError, match="shorter than"):
        LMBatcher(np.zeros(5, dtype=np.uint16), block_size=8, batch_size=2)


def test_tokenizer_training_is_deterministic_and_keyed_by_content(text_corpus, tmp_path,
                                                                  monkeypatch):
    a = get_tokenizer(vocab_size=300, corpus=text_corpus)
    monkeypatch.setenv("MUONFT_CACHE", str(tmp_path / "other-cache"))
    b = get_tokenizer(vocab_size=300, corpus=text_corpus)  # trained again from scratch
    assert a.key == b.key  # byte-identical tokenizer JSON
    path = text_corpus[len("file:"):]
    with open(path, "a") as f:
        f.write("\n\nzebra quagga okapi zebra quagga okapi zebra quagga okapi.")
    c = get_tokenizer(vocab_size=300, corpus=text_corpus)
    assert c.key != a.key  # an edited file is not served its old tokenizer


def test_batcher_windows_are_contiguous_and_in_range():
    tokens = np.arange(1000, dtype=np.uint16)  # token value == its position
    b = LMBatcher(tokens, block_size=32, batch_size=8, seed=11)
    for step in range(50):
        x, y = b.get(step)
        assert torch.equal(y, x + 1)  # y is the next token of x
        assert torch.equal(x - x[:, :1], torch.arange(32).expand(8, 32))  # one contiguous run
        assert int(x.min()) >= 0 and int(y.max()) <= 999
    assert not torch.equal(b.get(0)[0], LMBatcher(tokens, 32, 8, seed=12).get(0)[0])


def test_eval_batches_walk_the_split_in_order():
    tokens = np.arange(1000, dtype=np.uint16)
    xs = [x for x, _ in eval_batches(tokens, block_size=10, batch_size=4)]
    starts = torch.cat([x[:, 0] for x in xs]).tolist()
    assert starts == list(range(0, 990, 10))  # every full window once, non-overlapping
    assert len(list(eval_batches(tokens, 10, 4, max_batches=3))) == 3
    assert [x.tolist() for x, _ in eval_batches(tokens, 10, 4)] == [x.tolist() for x in xs]


def test_a_damaged_token_cache_is_rebuilt_not_used(tmp_cache, tmp_path):
    """A validation token cache truncated to 10 tokens used to give val_loss 0.0000: every
    load checks the recorded sha256 and rebuilds a cache that differs."""
    import numpy as np

    from muonft.data import get_tokenizer, load_tokens

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"document {i} about the lord and the film" for i in range(80)))
    tok = get_tokenizer(300, corpus=f"file:{corpus}")
    whole = np.array(load_tokens(f"file:{corpus}", "val", tok))
    (path,) = (tmp_cache / "tokens").glob("*-val-*.u16")
    path.write_bytes(path.read_bytes()[:20])  # truncated to 10 tokens
    assert np.array_equal(load_tokens(f"file:{corpus}", "val", tok), whole)
    data = bytearray(path.read_bytes())
    data[4] ^= 0x01  # one token edited
    path.write_bytes(bytes(data))
    assert np.array_equal(load_tokens(f"file:{corpus}", "val", tok), whole)
