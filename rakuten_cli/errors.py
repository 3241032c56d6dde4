"""How every command fails: one line on stderr saying what is wrong and what to do, exit code 2.

Commands raise :class:`UserError` (or let a known exception through); :class:`ReportingGroup` (the
app's group) turns it into that one line. Unknown exceptions are bugs: they keep their traceback.
Exceptions of libraries are recognised only when the library is already imported, so that
recognising them costs no start-up time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

import typer
from typer.core import TyperGroup

from rakuten_stream.redaction import redact
from rakuten_stream.settings import Settings

USAGE = 2


class UserError(Exception):
    """A problem the user can fix: ``message`` says what and what to do."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = USAGE) -> NoReturn:
    raise UserError(message, code)


def kafka_unreachable(bootstrap_servers: str, detail: str) -> UserError:
    return UserError(f"Kafka at {bootstrap_servers} is unreachable ({detail}): start one with "
                     "`rakuten-stream broker`, or point --bootstrap-servers / RAKUTEN_KAFKA_BOOTSTRAP_SERVERS at yours")


def explain(exc: BaseException) -> UserError | None:
    """The one line for an exception a user can fix, or None (a bug: let it show its traceback)."""
    if isinstance(exc, UserError):
        return exc
    for recognise in _RECOGNISERS:
        found = recognise(exc)
        if found is not None:
            return found
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0]) if text else type(exc).__name__


def _database(exc: BaseException) -> UserError | None:
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is None:
        return None
    if isinstance(exc, sqlalchemy_exc.ArgumentError | sqlalchemy_exc.NoSuchModuleError):
        return UserError(f"--database-url / RAKUTEN_DATABASE_URL is not a database URL ({_first_line(exc)}); "
                         "e.g. postgresql://user:password@host/db or sqlite:///var/rakuten-stream.db")
    if isinstance(exc, sqlalchemy_exc.OperationalError | sqlalchemy_exc.InterfaceError):
        detail = _first_line(exc.orig if getattr(exc, "orig", None) is not None else exc)
        return UserError(f"the database is unreachable ({detail}): start it, or fix --database-url / "
                         "RAKUTEN_DATABASE_URL (`rakuten-stream doctor` checks)")
    return None


def _kafka(exc: BaseException) -> UserError | None:
    confluent_kafka = sys.modules.get("confluent_kafka")
    if confluent_kafka is None or not isinstance(exc, confluent_kafka.KafkaException):
        return None
    error = exc.args[0] if exc.args else exc
    detail = error.str() if hasattr(error, "str") else str(error)
    return UserError(f"Kafka: {detail} (is it running? `rakuten-stream doctor` checks)")


def _by_name(module: str, names: tuple[str, ...]) -> Callable[[BaseException], UserError | None]:
    """Our own error types (bad data, unknown versions, ...): their message already says what is wrong."""

    def recognise(exc: BaseException) -> UserError | None:
        loaded = sys.modules.get(module)
        types = tuple(getattr(loaded, n) for n in names) if loaded is not None else ()
        return UserError(_first_line(exc)) if types and isinstance(exc, types) else None

    return recognise


_RECOGNISERS = (
    _database,
    _kafka,
    _by_name("rakuten_stream.datasets", ("DatasetError",)),
    _by_name("inference.registry", ("RegistryError",)),
    _by_name("rakuten_stream.clients.lag", ("LagError",)),
    _by_name("stream_workers.model_watcher", ("NoModelError",)),
    _by_name("stream_workers.replay", ("ReplayError",)),
)


def print_error(message: str) -> None:
    """``message`` as one line on stderr (no markup read in it: it may hold brackets)."""
    from rich.text import Text

    from rakuten_cli.context import console

    console.print(Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True)


def report(error: UserError) -> NoReturn:
    print_error(str(error))
    raise typer.Exit(error.code)


class ReportingGroup(TyperGroup):
    """The command group: a command's exception that a user can fix (:func:`explain`) becomes its one line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            error = explain(exc)
            if error is None:
                raise
            report(error)


#: how long a command waits for Kafka to answer before saying it is unreachable
KAFKA_TIMEOUT_S = 3.0


def require_kafka(settings: Settings, timeout_s: float = KAFKA_TIMEOUT_S) -> None:
    """Fail in one line, within ``timeout_s``, when Kafka does not answer (before any client retries for long)."""
    from rakuten_stream.doctor import check_kafka

    if not check_kafka(settings, timeout_s=timeout_s).ok:
        raise kafka_unreachable(settings.kafka.bootstrap_servers, f"no answer within {timeout_s:g}s")


def database_url(settings: Settings, wait: bool = False) -> str:
    """The database URL of ``settings``, refused in one line (naming it, password masked) when it is not one.

    With ``wait`` (the long-running services: ``worker``, ``retrain-worker``, ``init-db`` as a deployment's
    job), a server database that does not answer is retried with backoff for up to
    ``settings.database.startup_wait_s`` (RAKUTEN_DATABASE_STARTUP_WAIT_S), one line per retry; then the
    command fails with the one line of :func:`_database` (a database down at start is not a traceback).
    One-shot commands (``models list``, ...) fail at once, in that one line.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from rakuten_stream.database import normalise_url, wait_until_reachable

    url = settings.database.url.get_secret_value()
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        raise UserError(f"--database-url / RAKUTEN_DATABASE_URL {redact(url)!r} is not a database URL: "
                        "e.g. postgresql://user:password@host/db or sqlite:///var/rakuten-stream.db") from None
    if wait and parsed.get_backend_name() != "sqlite":
        where = redact(url)

        def retrying(why: str, pause: float) -> None:
            print_warning(f"the database at {where} does not answer ({redact(why)}): retrying in {pause:.1f} s")

        wait_until_reachable(url, settings.database.startup_wait_s, on_retry=retrying)
    return url


def print_warning(message: str) -> None:
    """``message`` as one line on stderr, as a warning."""
    from rich.text import Text

    from rakuten_cli.context import console

    console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)
