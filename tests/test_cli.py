from muonft.cli import main


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "muonft" in capsys.readouterr().out


def test_unknown_command_exits_two_with_one_line(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-command" in err[0]


def test_inspect_prints_partition(capsys):
    assert main(["inspect", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.attn.q.weight" in out and "hidden matrix" in out and "embedding" in out
    assert main(["inspect", "--lora-rank", "2"]) == 0
    assert "LoRA factor" in capsys.readouterr().out


def test_inspect_any_model_to_fine_tune(tmp_path, capsys):
    """--init takes what finetune takes (here a tiny random BERT directory, with its
    classification head) and prints its partition with the optimizer-state cost."""
    from hf_tiny import save_tiny_bert

    init = f"hf:{save_tiny_bert(tmp_path / 'bert')}"
    assert main(["inspect", "--init", init, "--task", "rt-sentiment"]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention.self.query.weight" in out
    assert "classifier.weight" in out and "AdamW entries; optimizer state" in out
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[1:-2]}
    assert rows["bert.encoder.layer.0.attention.self.query.weight"] == "muon"
    assert rows["bert.embeddings.word_embeddings.weight"] == "adamw"
    assert rows["classifier.weight"] == "adamw"
    assert main(["inspect", "--init", init, "--model", "tiny"]) == 2


def test_inspect_bad_model(capsys):
    assert main(["inspect", "--model", "huge"]) == 2
    assert capsys.readouterr().err.strip() == (
        "muonft: error: unknown model 'huge'; choose one of tiny, small, d12, d20")
