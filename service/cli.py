"""The one ``archsearch`` command line.

Exit codes: 0 success, 1 a runtime failure with a one-line reason on stderr, 2 bad usage.
"""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from . import __version__

app = typer.Typer(
    help="archsearch: architecture search for Pinto & Cox style convnets.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _settings(**overrides: object):  # -> Settings; imported lazily to keep --help fast
    from .config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            typer.echo(f"error: ARCHSEARCH_{field.upper()}: {err['msg']}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command()
def version() -> None:
    """Print the archsearch version."""
    typer.echo(f"archsearch {__version__}")


@db_app.command("upgrade")
def db_upgrade(
    database_url: str = typer.Option(None, help="Overrides ARCHSEARCH_DATABASE_URL."),
    revision: str = typer.Option("head", help="Target revision."),
) -> None:
    """Create or migrate the schema (SQLite file or PostgreSQL) to the latest revision."""
    from sqlalchemy.exc import SQLAlchemyError

    from .db import engine_from_settings
    from .migrate import current_revision, upgrade

    settings = _settings(database_url=database_url)
    engine = engine_from_settings(settings)
    try:
        before = current_revision(engine)
        upgrade(engine, revision)
        after = current_revision(engine)
    except SQLAlchemyError as exc:
        raise _fail(f"cannot migrate {engine.url.render_as_string()}: {exc.orig or exc}") from None
    finally:
        engine.dispose()
    typer.echo(f"database {engine.url.render_as_string()}: {before or '(empty)'} -> {after}")


@app.command()
def serve(
    host: str = typer.Option(None, help="Overrides ARCHSEARCH_HOST."),
    port: int = typer.Option(None, help="Overrides ARCHSEARCH_PORT."),
    database_url: str = typer.Option(None, help="Overrides ARCHSEARCH_DATABASE_URL."),
    upgrade_schema: bool = typer.Option(
        False, "--upgrade", help="Run `db upgrade` first if the schema is not at head."
    ),
) -> None:
    """Run the coordinator (REST API) with uvicorn."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from .app import create_app
    from .db import engine_from_settings
    from .migrate import current_revision, head_revision, upgrade

    settings = _settings(host=host, port=port, database_url=database_url)
    engine = engine_from_settings(settings)
    try:
        current = current_revision(engine)
        if current != head_revision():
            if not upgrade_schema:
                raise _fail(
                    f"schema of {engine.url.render_as_string()} is at {current or '(empty)'}, "
                    f"not {head_revision()}: run `archsearch db upgrade` (or serve --upgrade)"
                )
            upgrade(engine)
    except SQLAlchemyError as exc:
        raise _fail(f"database {engine.url.render_as_string()}: {exc.orig or exc}") from None
    finally:
        engine.dispose()
    typer.echo(
        f"archsearch {__version__} serving on http://{settings.host}:{settings.port} "
        f"(database {engine.url.render_as_string()})",
        err=True,
    )
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
