"""A click Group that imports a subcommand's module only when it is invoked.

The short help of each subcommand is declared next to its import path, so that
`cnet --help` lists every command without importing any of them.
"""

from __future__ import annotations

from importlib import import_module

import click


class LazyGroup(click.Group):
    def __init__(
        self, *args: object, lazy_commands: dict[str, tuple[str, str]] | None = None, **kw: object
    ) -> None:
        """`lazy_commands` maps a name to ("package.module:attribute", "short help")."""
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            target, _ = self.lazy_commands[cmd_name]
            module_name, _, attr = target.partition(":")
            command = getattr(import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{target} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands and name not in self.commands:
                rows.append((name, self.lazy_commands[name][1]))
            else:
                command = self.commands[name]
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
