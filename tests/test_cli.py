from muonft.cli import main


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "muonft" in capsys.readouterr().out


def test_unknown_command_exits_two_with_one_line(capsys):
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-command" in err[0]
