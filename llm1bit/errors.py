"""The one error type users see: a one-line message, a non-zero exit, no traceback."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """Bad input named with what is allowed. click prints it as one line and exits with 1."""


def unknown_choice(kind: str, value: str, allowed: list[str] | tuple[str, ...]) -> UserError:
    """An 'unknown X' error that lists the allowed values and suggests the closest ones."""
    import difflib  # here, not at the top: every command imports this module, few ever need a suggestion

    close = difflib.get_close_matches(value, list(allowed), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return UserError(f"unknown {kind} {value!r}{hint}; known: {', '.join(allowed)}")


class Interrupted(click.ClickException):
    """Ctrl-C: one line saying what was kept and how to resume, exit 130 (128 + SIGINT) as shells expect."""

    exit_code = 130

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


def warn(message: str) -> None:
    """One line on stderr that does not stop the run (what was assumed, recomputed or ignored)."""
    click.echo(f"warning: {message}", err=True)
