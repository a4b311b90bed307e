"""The `muonft` command: thin wrappers that parse arguments and call the library.

Every user-input error (``MuonftError``, ``ValueError``, ``FileNotFoundError``, pydantic's
``ValidationError``) becomes one line on stderr and exit code 2; see :func:`main`.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="muonft",
    help="Fine-tune pretrained models with Muon and measure the optimizer mismatch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """muonft: Muon fine-tuning, LoRA, sweeps and the mismatch study."""


# --- commands are registered below this line (one section per package) ---


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from muonft.errors import MuonftError

    return (MuonftError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            ValidationError)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the typer app, turning user errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="muonft", standalone_mode=False)
    except typer.Exit as e:  # raised by typer for --help and explicit exits
        return int(e.exit_code or 0)
    except typer.Abort:
        print("muonft: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("muonft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # decide below whether it is the user's error
        # Usage errors from typer/click (they carry format_message and exit_code).
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"muonft: {e.format_message()}", file=sys.stderr)
            return int(e.exit_code)
        if isinstance(e, _user_error_types()):
            msg = " ".join(str(e).split())
            print(f"muonft: error: {msg}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
