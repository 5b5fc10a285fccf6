"""`heimdall-tools doctor`: can every probe attach here? Each check with its fix."""

from __future__ import annotations

from typing import Optional

import typer


def doctor(json_path: Optional[str] = typer.Option(None, "--json", help="also write the checks as JSON")) -> None:
    """Check that every probe can attach here; print each check with its fix (exit 3 if not)."""
    from probes.doctor import doctor_command

    raise typer.Exit(doctor_command(json_path))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
