"""The one ``archsearch`` command line.

Exit codes: 0 success, 1 a runtime failure with a one-line reason on stderr, 2 bad usage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError

from archsearch.slurm import slurm_app
from service import __version__

if TYPE_CHECKING:
    from protocol.wire import ParetoOut

app = typer.Typer(
    help="archsearch: architecture search for Pinto & Cox style convnets.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
token_app = typer.Typer(help="API tokens (hashed at rest).", no_args_is_help=True)
app.add_typer(token_app, name="token")
study_app = typer.Typer(help="Studies on a running coordinator.", no_args_is_help=True)
app.add_typer(study_app, name="study")
spaces_app = typer.Typer(help="Built-in search spaces.", invoke_without_command=True)
app.add_typer(spaces_app, name="spaces")
app.add_typer(slurm_app, name="slurm")


def _settings(**overrides: object):  # -> Settings; imported lazily to keep --help fast
    from service.config import Settings

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

    from service.db import engine_from_settings
    from service.migrate import current_revision, upgrade

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
    keep_alive: int = typer.Option(
        5, min=1, max=300, help="Close an idle keep-alive connection after this many seconds."
    ),
    header_timeout: float = typer.Option(
        10.0,
        min=0.5,
        max=300.0,
        help="Close a connection whose request line and headers are not complete this many "
        "seconds after it opened or after its previous answer (slow-header clients).",
    ),
    max_header_bytes: int = typer.Option(
        16_384,
        min=4096,
        max=1_048_576,
        help="Largest request line + headers (h11 incomplete-event limit); more is 400.",
    ),
    limit_concurrency: int = typer.Option(
        1000,
        min=1,
        help="Connections and in-flight requests at once; beyond it new requests get 503.",
    ),
) -> None:
    """Run the coordinator (REST API) with uvicorn (h11).

    Connections are bounded: an idle keep-alive connection closes after --keep-alive
    seconds, one that does not finish its request headers within --header-timeout seconds
    is closed, headers are limited to --max-header-bytes, at most --limit-concurrency
    connections/requests at once. Bodies are limited by ARCHSEARCH_MAX_BODY_BYTES (413),
    and API writes are authenticated before their body is read.
    """
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from service.app import create_app
    from service.db import engine_from_settings
    from service.migrate import current_revision, head_revision, upgrade

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
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=header_timeout_protocol(header_timeout),
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=max_header_bytes,
        limit_concurrency=limit_concurrency,
    )


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, plus a deadline for each request's line and headers.

    uvicorn times out idle keep-alive connections but not a connection that opens and
    then trickles its headers (or sends nothing): such a connection is closed once
    ``seconds`` pass without a complete request head, counted from the connection or from
    the previous answer. The body is bounded by the size limit, not by this timer.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer = None
        _heads_seen = 0

        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(seconds, self._expired, self._heads_seen)

        def _expired(self, heads_seen: int) -> None:
            self._head_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if heads_seen == self._heads_seen and waiting and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a complete request head arrived
                self._heads_seen += 1
                if self._head_timer is not None:
                    self._head_timer.cancel()
                    self._head_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


@token_app.command("create")
def token_create(
    role: str = typer.Option(..., help="admin | worker | reader"),
    name: str = typer.Option("cli", help="A label to recognise the token by."),
    database_url: str = typer.Option(None, help="Overrides ARCHSEARCH_DATABASE_URL."),
) -> None:
    """Create a bearer token in the database and print it (it is stored hashed only)."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.auth import create_token
    from service.db import engine_from_settings, session_factory, session_scope
    from service.models import Role

    try:
        role_value = Role(role)
    except ValueError:
        typer.echo(
            f"error: --role must be one of {[r.value for r in Role]}, got {role!r}", err=True
        )
        raise typer.Exit(2) from None
    engine = engine_from_settings(_settings(database_url=database_url))
    try:
        with session_scope(session_factory(engine)) as s:
            token = create_token(s, role_value, name)
    except SQLAlchemyError as exc:
        raise _fail(f"cannot store the token: {exc.orig or exc} (ran `db upgrade`?)") from None
    finally:
        engine.dispose()
    typer.echo(token)


@token_app.command("list")
def token_list(
    database_url: str = typer.Option(None, help="Overrides ARCHSEARCH_DATABASE_URL."),
) -> None:
    """One line per token: id, name, role, created, revoked (the tokens are not shown:
    only their hashes are stored). The bootstrap ARCHSEARCH_ADMIN_TOKEN has no row."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.auth import list_tokens
    from service.db import engine_from_settings, session_factory, session_scope

    engine = engine_from_settings(_settings(database_url=database_url))
    try:
        with session_scope(session_factory(engine)) as s:
            rows = [
                (t.id, t.name, t.role.value, _when(t.created_at), _when(t.revoked_at))
                for t in list_tokens(s)
            ]
    except SQLAlchemyError as exc:
        raise _fail(f"cannot read the tokens: {exc.orig or exc} (ran `db upgrade`?)") from None
    finally:
        engine.dispose()
    typer.echo(f"{'id':>4}  {'role':7} {'created':20} {'revoked':20} name")
    for tid, name, role, created, revoked in rows:
        typer.echo(f"{tid:>4}  {role:7} {created:20} {revoked or '-':20} {name}")


@token_app.command("revoke")
def token_revoke(
    token: str = typer.Argument(..., metavar="ID|NAME", help="Token id or (unique) name."),
    database_url: str = typer.Option(None, help="Overrides ARCHSEARCH_DATABASE_URL."),
) -> None:
    """Revoke a token: it gets 401 from then on. Worker actions (claim, heartbeat,
    reports) refuse it at once; other routes of a running coordinator may honour their
    cached check for up to 10 seconds."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.auth import revoke_token
    from service.db import engine_from_settings, session_factory, session_scope
    from service.errors import NotFound

    engine = engine_from_settings(_settings(database_url=database_url))
    try:
        with session_scope(session_factory(engine)) as s:
            row = revoke_token(s, token)
            line = f"revoked token {row.id} ({row.name}, {row.role.value}) at "
            line += _when(row.revoked_at)
    except NotFound as exc:
        raise _fail(exc.message) from None
    except SQLAlchemyError as exc:
        raise _fail(f"cannot revoke the token: {exc.orig or exc} (ran `db upgrade`?)") from None
    finally:
        engine.dispose()
    typer.echo(line)


def _when(value: object) -> str:
    from datetime import datetime

    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)[:19]


# -- talking to a coordinator -----------------------------------------------------------
CoordinatorOpt = typer.Option(
    "http://127.0.0.1:8000",
    "--coordinator",
    envvar="ARCHSEARCH_COORDINATOR",
    help="Coordinator base URL.",
)
TokenOpt = typer.Option(None, "--token", envvar="ARCHSEARCH_TOKEN", help="Bearer token.")


def _call(coordinator: str, token: str | None, fn):  # type: ignore[no-untyped-def]
    import httpx

    from client import ApiError, Client

    try:
        with Client(coordinator, token) as c:
            return fn(c)
    except ApiError as exc:
        raise _fail(exc.message + (f" [field: {exc.field}]" if exc.field else "")) from None
    except httpx.TransportError as exc:
        raise _fail(f"cannot reach the coordinator at {coordinator}: {exc}") from None


def _print_json(data: object) -> None:
    import json

    from pydantic import BaseModel

    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


@study_app.command("create")
def study_create(
    name: str = typer.Option(..., help="Study name."),
    dataset: str = typer.Option(..., help="Dataset URI, e.g. builtin:mnist5k."),
    space: str = typer.Option("pinto-cox", help="Built-in space name or @file.json."),
    evaluator: str = typer.Option("screen", help="screen | train | pairs | plugin:NAME"),
    algorithm: str = typer.Option("tpe", help="tpe | random | grid"),
    max_trials: int = typer.Option(100, help="Trials in all."),
    max_parallel: int = typer.Option(4, help="Suggestion queue depth (parallel workers)."),
    seed: int = typer.Option(0, help="Study seed (splits, suggestions)."),
    top_k: int = typer.Option(5, help="Best trials re-scored on the test split at the end."),
    blend_k: int = typer.Option(
        0, help="After the finals, blend the best blend_k models (screen/pairs; 0: none)."
    ),
    blend_weights: str = typer.Option("uniform", help="Blend weights: uniform | validation."),
    schedule: str = typer.Option(
        None,
        help='ASHA successive halving as JSON, e.g. \'{"resource": "train_per_class", '
        '"min": 50, "max": 800, "eta": 3}\' (screen) or resource "epochs" (train); '
        "max-trials then counts configurations.",
    ),
    coordinator: str = CoordinatorOpt,
    token: str = TokenOpt,
) -> None:
    """Create a study and print it as JSON."""
    import json
    from pathlib import Path

    schedule_value = None
    if schedule is not None:
        try:
            schedule_value = json.loads(schedule)
        except ValueError as exc:
            raise _fail(f"--schedule is not JSON: {exc}") from None

    space_value: object = space
    if space.startswith("@"):
        try:
            space_value = json.loads(Path(space[1:]).read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"--space {space}: {exc}") from None
    scheme, sep, target = dataset.partition(":")
    if sep and scheme != "builtin" and target and not target.startswith("/"):
        dataset = f"{scheme}:{Path(target).resolve()}"  # the server needs absolute paths
    body = dict(
        name=name,
        dataset=dataset,
        space=space_value,
        evaluator=evaluator,
        algorithm=algorithm,
        max_trials=max_trials,
        max_parallel=max_parallel,
        seed=seed,
        top_k=top_k,
        blend_k=blend_k,
        blend_weights=blend_weights,
    )
    if schedule_value is not None:
        body["schedule"] = schedule_value  # the coordinator checks it (422 names the field)
    _print_json(_call(coordinator, token, lambda c: c.create_study(**body)))


@study_app.command("list")
def study_list(coordinator: str = CoordinatorOpt, token: str = TokenOpt) -> None:
    """One line per study: id, state, progress, best score, name."""
    studies = _call(coordinator, token, lambda c: c.studies())
    typer.echo(f"{'id':>4}  {'state':9} {'done':>11}  {'best':>8}  name")
    for s in studies:
        best = "-" if s.best_value is None else f"{s.best_value:.4f}"
        typer.echo(
            f"{s.id:>4}  {s.state.value:9} {s.search_done:>5}/{s.max_trials:<5}  {best:>8}  "
            f"{s.name}"
        )


@study_app.command("show")
def study_show(study_id: int, coordinator: str = CoordinatorOpt, token: str = TokenOpt) -> None:
    """The study as JSON (settings, counts by state, best score, infeasible rate)."""
    _print_json(_call(coordinator, token, lambda c: c.study(study_id)))


def _print_pareto(front: ParetoOut) -> None:
    """The Pareto set as a table, cheapest first (``study best --pareto``)."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    typer.echo(
        f"{'#':>5}  {'value':>8}  {'test':>8}  {'GFLOPs':>9}  {'params':>11}  "
        f"{'features':>9}  {'s/img':>9}  {'rung':>4}  architecture"
    )
    for p in front.front:
        typer.echo(
            f"{p.number:>5}  {p.value:>8.4f}  {num(p.test_value, '.4f'):>8}  "
            f"{p.gflops_per_image:>9.4g}  {num(p.n_params, ','):>11}  "
            f"{num(p.n_features, ','):>9}  {num(p.seconds_per_image, '.3g'):>9}  "
            f"{p.rung:>4}  {p.arch_summary or '-'}"
        )
    note = f"{len(front.front)} of {front.n_configurations} COMPLETE configurations on the front"
    if front.n_unknown_cost:
        note += f"; {front.n_unknown_cost} of unknown cost left out"
    if front.scheduled:
        note += "; values are at each configuration's highest rung (lower rungs: less data)"
    typer.echo(note, err=True)


@study_app.command("best")
def study_best(
    study_id: int,
    k: int = typer.Option(5, help="How many."),
    pareto: bool = typer.Option(
        False,
        "--pareto",
        help="Instead: the Pareto set of validation score against GFLOP per image.",
    ),
    coordinator: str = CoordinatorOpt,
    token: str = TokenOpt,
) -> None:
    """The k best trials: number, validation score, test score, architecture; then the
    study's blends, marked ``blend``, with their members' numbers. ``--pareto``: the
    configurations no other is both cheaper (GFLOP per image) and better than, with their
    cost (GFLOPs, parameters, features, measured seconds per image) and rung."""
    if pareto:
        _print_pareto(_call(coordinator, token, lambda c: c.pareto(study_id)))
        return
    best = _call(coordinator, token, lambda c: c.best_out(study_id, k))
    typer.echo(f"{'#':>5}  {'value':>8}  {'test':>8}  architecture")
    for t in best.trials:
        test = "-" if t.test_value is None else f"{t.test_value:.4f}"
        typer.echo(f"{t.number:>5}  {t.value or 0:>8.4f}  {test:>8}  {t.arch_summary}")
    for b in best.blends:
        value = "-" if b.value is None else f"{b.value:.4f}"
        test = "-" if b.test_value is None else f"{b.test_value:.4f}"
        members = " ".join(f"#{n}" for n in b.member_numbers)
        weights = b.params.get("weights", "uniform")
        typer.echo(
            f"{b.number:>5}  {value:>8}  {test:>8}  blend of {len(b.member_numbers)}: "
            f"{members} ({weights} weights; {b.state.value})"
        )


@study_app.command("blend")
def study_blend(
    study_id: int,
    k: int = typer.Option(..., "--k", help="Blend the best k COMPLETE search trials."),
    weights: str = typer.Option("uniform", help="uniform | validation"),
    coordinator: str = CoordinatorOpt,
    token: str = TokenOpt,
) -> None:
    """Queue a blend of a finished (or stopped) study's best k models; prints what was
    queued. Its scores appear in `study best` once a worker has run it."""
    t = _call(coordinator, token, lambda c: c.blend(study_id, k, weights))
    members = " ".join(f"#{n}" for n in t.member_numbers)
    typer.echo(
        f"queued blend trial {t.number} of study {study_id}: the best "
        f"{len(t.member_numbers)} ({members}), {weights} weights"
    )


@study_app.command("export")
def study_export(
    study_id: int,
    output: str = typer.Option("-", "-o", help="File or -."),
    coordinator: str = CoordinatorOpt,
    token: str = TokenOpt,
) -> None:
    """All trials as CSV."""
    from pathlib import Path

    text = _call(coordinator, token, lambda c: c.export_csv(study_id))
    if output == "-":
        typer.echo(text, nl=False)
    else:
        Path(output).write_text(text)
        typer.echo(f"wrote {output}", err=True)


@study_app.command("export-model")
def study_export_model(
    study_id: int,
    output: str = typer.Option(..., "-o", "--output", help="The model file to write."),
    trial: int | None = typer.Option(
        None, "--trial", help="Trial number (default: the best test score, else validation)."
    ),
    device: str = typer.Option("cpu", help="Where to re-fit the readout: cpu, cuda, cuda:1."),
    file_format: str = typer.Option(
        "pt",
        "--format",
        help="pt: the archsearch model file; onnx: an ONNX graph (uint8 images in, class "
        "scores out; needs the onnx extra), checked against torch with onnxruntime.",
    ),
    coordinator: str = CoordinatorOpt,
    token: str = TokenOpt,
) -> None:
    """Write a trial's model (architecture, filters, fitted readout) to one file.

    The readout is re-fitted here exactly as the trial's final evaluation did (the study's
    data, split, seed and l2 choice), so the data must be readable on this machine.
    ``screen`` and ``pairs`` studies (a pairs model is View 1's: its readout fitted on
    pairsDevTrain). Load the file with ``workers.model_file.load_model`` or
    ``torch.load(path, weights_only=True)``; label images with ``archsearch predict``.
    """
    from workers.datasets import DatasetError
    from workers.export import (
        ExportError,
        check_exportable,
        choose_trial,
        export_trial,
        export_trial_onnx,
    )
    from workers.model_file import save_model

    if file_format not in ("pt", "onnx"):
        raise _fail(f"--format must be pt or onnx, got {file_format!r}")
    study, trials = _call(
        coordinator, token, lambda c: (c.study(study_id), list(c.trials(study_id)))
    )
    try:
        check_exportable(study)
        chosen = choose_trial(trials, trial)
        if file_format == "onnx":
            exported, diff = export_trial_onnx(study, chosen, output, device=device)
            digest = f"max relative difference to torch {diff:.1e}"
        else:
            exported = export_trial(study, chosen, device=device)
    except (ExportError, DatasetError, ValueError, RuntimeError, ImportError) as exc:
        # ValueError: no test split, an infeasible architecture, an ONNX check that
        # failed; RuntimeError: a device; ImportError: the onnx extra is not installed.
        raise _fail(str(exc).strip().splitlines()[0]) from None
    except OSError as exc:
        raise _fail(f"cannot write {output}: {exc}") from None
    if file_format == "pt":
        try:
            digest = f"sha256 {save_model(exported, output)[:12]}"
        except OSError as exc:
            raise _fail(f"cannot write {output}: {exc}") from None
    meta = exported.meta

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    if exported.protocol == "pairs":
        scored = (
            f"View 1 accuracy {score(meta['export_view1_value'])} on "
            f"{meta['n_view1_test']} pairsDevTest pairs (the trial's value: "
            f"{score(meta['value'])})"
        )
    else:
        scored = (
            f"test accuracy {score(meta['export_test_value'])} on {meta['n_test']} images "
            f"(the trial's test_value: {score(meta['test_value'])})"
        )
    typer.echo(
        f"wrote {output}: study {study_id} trial {chosen.number}, {scored}, {digest}",
        err=True,
    )


@app.command()
def predict(
    model: str = typer.Argument(..., help="A model file from `study export-model`."),
    images: list[str] = typer.Argument(None, help="Image files and/or directories."),
    pairs: str = typer.Option(
        None,
        "--pairs",
        help="A pairs model: the file of pairs to compare, one per line, 'IMG1 IMG2' or "
        "CSV 'IMG1,IMG2' (paths relative to the file).",
    ),
    csv_out: bool = typer.Option(False, "--csv", help="CSV (path,label) with a header."),
    convert: bool = typer.Option(
        False,
        "--convert",
        help="Convert colour and resize odd images as the imagefolder loader does "
        "(default: refuse an image of the wrong size or channels).",
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1."),
) -> None:
    """Print one label per image (``PATH<TAB>LABEL``; ``--csv`` for CSV), or for a pairs
    model and ``--pairs FILE`` one line per pair (``IMG1<TAB>IMG2<TAB>same|different<TAB>
    SCORE``, the score > 0 for same)."""
    import csv
    import sys

    from workers.model_file import ModelFileError, load_model
    from workers.predict import PredictInputError, image_paths, read_images, read_pair_file

    try:
        loaded = load_model(model, device=device)
        if loaded.protocol == "pairs":
            if pairs is None or images:
                raise PredictInputError(
                    f"{model} is a pairs model: give the pairs with --pairs FILE (no images)"
                )
            listed = read_pair_file(pairs)
            read = [
                read_images(
                    [p[k] for p in listed],
                    color=loaded.color,
                    size=loaded.image_size,
                    convert=convert,
                )
                for k in (0, 1)
            ]
            labels, scores = loaded.predict_pairs(read[0], read[1])
        else:
            if pairs is not None:
                raise PredictInputError(
                    f"{model} labels single images (a {loaded.protocol} model): --pairs "
                    "needs a model exported from a pairs study"
                )
            paths = image_paths(images or [])
            pixels = read_images(paths, color=loaded.color, size=loaded.image_size, convert=convert)
            labels = loaded.predict(pixels)
    except (ModelFileError, PredictInputError) as exc:
        raise _fail(str(exc)) from None
    except RuntimeError as exc:  # a device that is not there, out of memory
        raise _fail(str(exc).strip().splitlines()[0]) from None
    if loaded.protocol == "pairs":
        rows = [
            [str(a), str(b), label, f"{score:.6g}"]
            for (a, b), label, score in zip(listed, labels, scores, strict=True)
        ]
        if csv_out:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(["image1", "image2", "label", "score"])
            writer.writerows(rows)
            sys.stdout.flush()
        else:
            for row in rows:
                typer.echo("\t".join(row))
        return
    if csv_out:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label"])
        writer.writerows([str(p), label] for p, label in zip(paths, labels, strict=True))
        sys.stdout.flush()
    else:
        for p, label in zip(paths, labels, strict=True):
            typer.echo(f"{p}\t{label}")


@app.command()
def worker(
    coordinator: str = CoordinatorOpt,
    token: str = TokenOpt,
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    studies: str = typer.Option(None, help="Comma-separated study ids (default: any)."),
    max_trials: int = typer.Option(None, help="Exit after this many trials."),
    data_dir: str = typer.Option(
        None,
        envvar="ARCHSEARCH_WORKER_DATA_DIR",
        help="Spool and relative dataset paths (default ~/.archsearch/worker).",
    ),
    idle_exit: float = typer.Option(None, help="Exit after this many seconds without work."),
    name: str = typer.Option(None, help="Worker name shown in the dashboard."),
    batch: int = typer.Option(
        16,  # workers.daemon.DEFAULT_BATCH (not imported here: it pulls in the daemon)
        min=1,
        max=64,  # protocol.wire.MAX_BATCH
        envvar="ARCHSEARCH_WORKER_BATCH",
        help="Most trials claimed at once while trials are fast (under 2 s each): a batch "
        "holds about 4 s of work. 1 claims one trial at a time.",
    ),
    threads: int = typer.Option(
        None,
        min=1,
        envvar="ARCHSEARCH_WORKER_THREADS",  # workers.threads.THREADS_ENV
        help="CPU threads for torch. Default: this node's cores divided by "
        "ARCHSEARCH_LOCAL_WORKERS when a launcher started several workers together (the "
        "demo does), else SLURM_CPUS_PER_TASK under Slurm, else every core.",
    ),
    group: int = typer.Option(
        0,
        min=0,
        max=64,  # protocol.wire.MAX_BATCH
        envvar="ARCHSEARCH_WORKER_GROUP",
        help="Screen trials of one study evaluated together, sharing each image batch "
        "(0: 8 on a GPU, 1 on a CPU).",
    ),
    feature_cache: str = typer.Option(
        "2GiB",  # workers.feature_cache.DEFAULT_FEATURE_CACHE_BYTES
        envvar="ARCHSEARCH_WORKER_FEATURE_CACHE",
        help="Host memory for the screen features of a scheduled (ASHA) study's trials, "
        "so that a promotion or final extracts only the images its rung adds, e.g. 2GiB; "
        "0 keeps none. Under --max-memory at most a quarter of it.",
    ),
    max_memory: str = typer.Option(
        None,
        envvar="ARCHSEARCH_WORKER_MAX_MEMORY",
        help="Resident memory budget of this worker, e.g. 3GiB or 800MB. A candidate "
        "estimated to need more is reported INFEASIBLE with the estimate, unstarted; "
        "batches shrink to fit. Host memory only (GPU memory: out of memory halves the "
        "batch, then INFEASIBLE).",
    ),
) -> None:
    """Run a worker daemon: claim trials, evaluate them on this machine, report."""
    import logging
    from pathlib import Path

    from workers.daemon import WorkerConfig, WorkerDaemon
    from workers.memory import parse_size
    from workers.threads import apply_threads, choose_threads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        study_ids = [int(s) for s in studies.split(",")] if studies else None
    except ValueError:
        typer.echo(f"error: --studies must be comma-separated ids, got {studies!r}", err=True)
        raise typer.Exit(2) from None
    try:
        budget = parse_size(max_memory) if max_memory is not None else None
        cache = 0 if feature_cache.strip() == "0" else parse_size(feature_cache)
        choice = choose_threads(threads)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    apply_threads(choice.threads)
    logging.getLogger("archsearch.worker").info(
        "%d torch thread(s) (%s)", choice.threads, choice.why
    )
    config = WorkerConfig(
        coordinator=coordinator,
        token=token,
        device=device,
        studies=study_ids,
        max_trials=max_trials,
        idle_exit_seconds=idle_exit,
        data_dir=Path(data_dir) if data_dir else Path.home() / ".archsearch" / "worker",
        batch=batch,
        max_memory=budget,
        group=group,
        feature_cache=cache,
    )
    if name:
        config.name = name
    try:
        daemon = WorkerDaemon(config)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    daemon.install_signal_handlers()
    done = daemon.run()
    typer.echo(f"worker {daemon.worker_id}: {done} trial(s) finished", err=True)


@app.command()
def demo(
    data_dir: str = typer.Option(
        None,
        help="Where the demo keeps its database and logs "
        "(default ~/.archsearch/demo; wiped at the start).",
    ),
    trials: int = typer.Option(24, help="Search trials."),
    workers: int = typer.Option(2, help="Local worker processes."),
    dataset: str = typer.Option("builtin:mnist5k", help="Dataset URI."),
    port: int = typer.Option(None, help="Coordinator port (default: a free one)."),
    serve: bool = typer.Option(
        True, "--serve/--no-serve", help="Keep serving the dashboard after the run."
    ),
    keep: bool = typer.Option(False, help="Keep a previous demo's database."),
) -> None:
    """Run archsearch end to end here: coordinator + workers + a TPE study + leaderboard."""
    from pathlib import Path

    from archsearch.demo import DemoOptions, default_data_dir, reset_data_dir, run_demo

    path = Path(data_dir) if data_dir else default_data_dir()
    if not keep:
        reset_data_dir(path)
    code = run_demo(
        DemoOptions(
            data_dir=path, trials=trials, workers=workers, dataset=dataset, port=port, serve=serve
        )
    )
    raise typer.Exit(code)


@spaces_app.callback()
def spaces_list(ctx: typer.Context) -> None:
    """List the built-in spaces (``archsearch spaces show NAME`` prints one)."""
    if ctx.invoked_subcommand is not None:
        return
    from search_space import DEFAULT_SPACE, list_spaces

    for s in list_spaces():
        mark = " (default)" if s.name == DEFAULT_SPACE else ""
        typer.echo(f"{s.name}{mark}: {s.description.splitlines()[0]}")


@spaces_app.command("show")
def spaces_show(
    name: str,
    seed: int = typer.Option(0, help="Seed of the sampled example."),
) -> None:
    """Print a built-in space as JSON and one architecture sampled from it."""
    import json

    from search_space import InfeasibleArchitecture, get_space, validate

    try:
        space = get_space(name)
    except KeyError as exc:
        raise _fail(str(exc.args[0])) from None
    typer.echo(json.dumps(space.to_dict(), indent=2))
    raw = space.sample(seed)
    arch = space.to_arch(raw)
    typer.echo(f"\nsample (seed {seed}): {json.dumps(raw, sort_keys=True)}")
    typer.echo(f"architecture: {arch.summary()}")
    try:
        report = validate(arch)
        typer.echo(f"features: {report.n_features}, MFLOP/image: {report.flops / 1e6:.1f}")
    except InfeasibleArchitecture as exc:
        typer.echo(f"INFEASIBLE: {exc.reason}")
