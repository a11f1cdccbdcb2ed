"""The command-line reference in markdown, generated from the CLI itself.

``python -m emstream.cli_reference`` prints it; the README holds a copy between the markers
``<!-- cli-reference:start -->`` and ``<!-- cli-reference:end -->``, and a test fails when the two
disagree, so the README cannot drift from the options the commands really take.
"""

from __future__ import annotations

import typer

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def _commands(group, prefix: str = "emstream"):
    import click  # typer's own classes follow click's interface (typer may vendor click)

    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        if hasattr(cmd, "list_commands"):
            yield from _commands(cmd, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", cmd


def _is(p, kind: str) -> bool:
    return getattr(p, "param_type_name", "") == kind and not getattr(p, "hidden", False)


def _option(p) -> str:
    names = [*p.opts, *getattr(p, "secondary_opts", [])]
    text = " / ".join(f"`{n}`" for n in names)
    help_text = " ".join((getattr(p, "help", None) or "").split()).rstrip(".")
    return f"  - {text}: {help_text}" if help_text else f"  - {text}"


def reference() -> str:
    from emstream.cli import app

    group = typer.main.get_command(app)
    lines = []
    top = [p for p in group.params if _is(p, "option")]
    if top:
        lines += ["- `emstream` (before any command)", *(_option(p) for p in top)]
    for name, cmd in _commands(group):
        opts = [p for p in cmd.params if _is(p, "option") and p.name != "help"]
        args = [(p.metavar or p.name).upper() for p in cmd.params if _is(p, "argument")]
        lines.append(f"- `{name}{''.join(' ' + a for a in args)}`")
        lines += [_option(p) for p in opts]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference())
