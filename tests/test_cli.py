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


def test_inspect_bad_model(capsys):
    assert main(["inspect", "--model", "huge"]) == 2
    assert capsys.readouterr().err.strip() == (
        "muonft: error: unknown model 'huge'; choose one of tiny, small, d12, d20")
