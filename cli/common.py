"""Helpers shared by every command module: settings, the error boundary, option
parsing, and output (tables, JSON, ids, ages).

Only click (and the click-free cli/shared.py) is imported at module level; the HTTP
client, json and datetime are imported by the functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from cnet.cli.shared import DEFAULT_HOST, describe_error, print_error

if TYPE_CHECKING:
    from cnet.cli.client import Client

SHORT_ID_LEN = 12
T = TypeVar("T")


class Settings:
    """Global options, stored as the root context's `obj`."""

    __slots__ = ("host", "debug")

    def __init__(self, host: str = DEFAULT_HOST, debug: bool = False) -> None:
        self.host = host
        self.debug = debug


class CnetError(click.ClickException):
    """A one-line error (`Error: <message>`) with its exit status; click shows it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        print_error(self.format_message(), file)  # the fast path's report too


def fail(message: str, exit_code: int = 1) -> NoReturn:
    raise CnetError(message, exit_code)


# --- error boundary -----------------------------------------------------------------


@contextmanager
def error_boundary(debug: bool) -> Iterator[None]:
    """Turn any exception into one `Error:` line and exit 1; `--debug` keeps tracebacks.

    click's own exceptions (usage errors, Exit, Abort) pass through untouched so
    usage errors keep exit status 2.
    """
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:
        if debug:
            raise
        raise CnetError(*describe_error(exc)) from None


def run_each(
    names: Iterable[str], action: Callable[[str], T], not_found: str | None = None
) -> tuple[list[T], list[str]]:
    """Apply `action` to each name; collect results and one error message per failure.

    Docker semantics for multi-target commands (rm, inspect): keep going after a
    failure and report every error at the end. With `not_found` set, a 404 is
    reported as "<not_found>: <name>" (docker's "No such network: x").
    """
    from cnet.cli.client import APIError, DaemonUnreachable

    results: list[T] = []
    errors: list[str] = []
    for name in names:
        try:
            results.append(action(name))
        except DaemonUnreachable:
            raise
        except APIError as exc:
            errors.append(f"{not_found}: {name}" if not_found and exc.status == 404 else str(exc))
    return results, errors


def exit_on_errors(errors: Sequence[str]) -> None:
    """Print each error on its own line and exit 1 if there was any."""
    for message in errors:
        print_error(message)
    if errors:
        raise click.exceptions.Exit(1)


# --- the daemon ---------------------------------------------------------------------


def client() -> Client:
    """A client for the daemon chosen by -H/--host / CNET_HOST."""
    from cnet.cli.client import Client

    settings = click.get_current_context().find_object(Settings) or Settings()
    return Client(settings.host)


def resource_path(kind: str) -> Callable[..., str]:
    """`resource_path("networks")(name, "connect")` -> "/networks/<name>/connect" (quoted)."""

    def path(name: str, *rest: str) -> str:
        from cnet.cli.client import url_path

        return url_path(kind, name, *rest)

    return path


def inspect_each(names: Iterable[str], path: Callable[[str], str], kind: str) -> None:
    """Docker's `inspect NAME...`: a JSON array of what was found, then one error line per
    name that was not (exit 1)."""
    api = client()
    found, errors = run_each(names, lambda n: api.get(path(n)), not_found=f"No such {kind}")
    print_json(found)
    exit_on_errors(errors)


def remove_each(names: Iterable[str], path: Callable[[str], str],
                query: dict[str, str] | None = None) -> None:
    """Docker's `rm NAME...`: DELETE each, print the name of each one removed, then one
    error line per failure (exit 1)."""
    api = client()

    def remove(name: str) -> None:
        api.delete(path(name), query=query)
        click.echo(name)

    _, errors = run_each(names, remove)
    exit_on_errors(errors)


# --- option parsing -----------------------------------------------------------------


def split_kv(value: str, require_value: bool = False) -> tuple[str, str]:
    """Split "key=value" (docker's MapOpts: a bare "key" means an empty value)."""
    key, sep, val = value.partition("=")
    if not key or (require_value and (not sep or not val)):
        raise click.BadParameter(f'"{value}": expected key=value')
    return key, val


def kv_option(*decls: str, require_value: bool = False, **kw: Any) -> Callable[[T], T]:
    """A repeatable `key=value` option whose value arrives as a dict."""

    def callback(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
        return dict(split_kv(v, require_value) for v in values)

    return click.option(*decls, multiple=True, callback=callback, **kw)


def filter_option(help: str, short: bool = True) -> Callable[[T], T]:
    """[-f/]--filter key=value, repeatable; arrives as {key: [values]} like docker's filters.

    `short=False` where -f means --force (docker's `network prune`).
    """

    def callback(
        _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
    ) -> dict[str, list[str]]:
        filters: dict[str, list[str]] = {}
        for value in values:
            key, sep, val = value.partition("=")
            if not sep:
                raise click.BadParameter("bad format of filter (expected name=value)")
            filters.setdefault(key.strip().lower(), []).append(val.strip())
        return filters

    return click.option(
        *(("-f",) if short else ()),
        "--filter",
        "filters",
        multiple=True,
        callback=callback,
        metavar="KEY=VALUE",
        help=help,
    )


def filters_query(filters: dict[str, list[str]]) -> dict[str, str] | None:
    """The `?filters=` query parameter (JSON) for a filter dict, or None when empty."""
    if not filters:
        return None
    import json

    return {"filters": json.dumps(filters, separators=(",", ":"))}


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Only display IDs.")
no_trunc_option = click.option("--no-trunc", is_flag=True, help="Do not truncate the output.")


# --- output -------------------------------------------------------------------------


def print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=4))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "") -> None:
    """Columns laid out like docker's tabwriter (min width 10, padding 3)."""
    table = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(10, max(len(row[i]) for row in table) + 3) for i in range(len(headers) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo((indent + "".join(cells) + row[-1]).rstrip())


def short_id(object_id: str, no_trunc: bool = False) -> str:
    return object_id if no_trunc else object_id[:SHORT_ID_LEN]


def human_since(timestamp: str) -> str:
    """RFC3339 -> "5 minutes ago" (docker's units.HumanDuration); raw text if unparsable."""
    from datetime import UTC, datetime

    try:
        then = datetime.fromisoformat(timestamp)
    except (TypeError, ValueError):
        return timestamp
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return human_duration((datetime.now(UTC) - then).total_seconds()) + " ago"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{s // 3600 // 24 // 365} years"


def human_size(size: float) -> str:
    """docker's units.HumanSizeWithPrecision(size, 3): decimal units, 3 digits."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{units[i]}"
