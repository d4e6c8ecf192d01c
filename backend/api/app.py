"""The FastAPI app factory. ``create_app(market)`` serves a ready market (tests, in-process use);
``create_app(settings=...)`` builds one from the settings at startup (store, chain, grid)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from backend.api.deps import ApiOptions
from backend.api.errors import status_and_code
from backend.api.limits import BodyLimits, Limits
from backend.api.routes import (
    control,
    devices,
    events,
    flex,
    grid,
    health,
    intervals,
    orders,
    participants,
    trades,
)
from backend.api.routes.dashboard import router as dashboard_router
from backend.api.schemas import ControlActionOut, ErrorResponse
from backend.errors import TegridError
from backend.iot.control_store import ControlStore
from backend.market.events import EventBus
from backend.market.factory import build_market
from backend.market.service import Market
from backend.settings import Settings
from grid.errors import GridError

log = logging.getLogger("tegrid.api")


def _problem(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": {"code": code, "message": message, **extra}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Package root errors -> 4xx (503 for an unreachable chain/store) with {detail: {code,
    message}}."""

    @app.exception_handler(TegridError)
    async def tegrid_error(_request: Request, exc: TegridError) -> JSONResponse:
        status, code = status_and_code(exc)
        field = getattr(exc, "field", None)
        return _problem(status, code, str(exc), **({"field": field} if field else {}))

    @app.exception_handler(GridError)
    async def grid_error(_request: Request, exc: GridError) -> JSONResponse:
        status, code = status_and_code(exc)
        return _problem(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] if len(first["loc"]) > 1 else first["loc"])
        return _problem(422, "INVALID_REQUEST", f"{where}: {first['msg']}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = ", ".join(_allowed_methods(app, request)) or headers.get("Allow", "")
            headers["Allow"] = allowed
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        response = _problem(exc.status_code, code, message)
        response.headers.update(headers)
        return response


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path (Starlette's own 405 names only
    the first route that matched the path, e.g. POST but not GET for /orders)."""
    base = {
        "type": "http",
        "path": request.scope["path"],
        "root_path": request.scope.get("root_path", ""),
        "headers": [],
    }
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**base, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
}


async def _scheduler(app: FastAPI, tick_seconds: float) -> None:
    """Closes intervals at gate closure, retries unfinished batches, follows settlements."""
    while True:
        await asyncio.sleep(tick_seconds)
        market: Market | None = getattr(app.state, "market", None)
        if market is None:
            continue
        try:
            await asyncio.to_thread(market.tick)
        except Exception as exc:  # keep the loop alive; the next tick retries
            log.warning("scheduler tick failed: %s", exc)


async def _control_events(app: FastAPI, poll_seconds: float) -> None:
    """Relays the dispatcher's state changes (its store's change log, written by another
    process) to the event stream as ``control`` events, from the ones after start-up on."""
    store: ControlStore | None = app.state.control
    if store is None:
        return
    cursor = await asyncio.to_thread(store.last_event_id)
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            events = await asyncio.to_thread(store.events_after, cursor)
        except Exception as exc:  # keep the loop alive; the next poll retries
            log.warning("reading control events failed: %s", exc)
            continue
        for cursor, data in events:  # noqa: B007 - the cursor moves with the events
            out = ControlActionOut.model_validate(data).model_dump(mode="json")
            app.state.events.publish("control", out)


def create_app(
    market: Market | None = None,
    *,
    settings: Settings | None = None,
    dev: bool = False,
    scheduler: bool = True,
    tick_seconds: float = 2.0,
    recover: bool = True,
    market_factory: Callable[[Settings, EventBus], Market] | None = None,
    background: list[Callable[[Market], Any]] | None = None,
    control_store: ControlStore | None = None,
    control_poll_seconds: float = 0.5,
) -> FastAPI:
    """Build the API. Without ``market`` one is built at startup from ``settings`` (or the
    environment) with ``market_factory`` (default ``backend.market.factory.build_market``).
    ``background`` callables are started with the market (each gets it; e.g. the settlement
    keeper). ``control_store``: the dispatcher's store (default: opened from the settings'
    ``control_database_url`` at startup)."""
    events_bus = market.events if market is not None else EventBus()
    configured = settings or Settings()
    options = ApiOptions(
        dev=dev,
        broker_url=configured.broker_url,
        public_rpc_url=configured.public_rpc_url or configured.rpc_url,
        chain_name=configured.chain_name,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.market is None:
            cfg = settings or Settings.from_env()
            factory = market_factory
            if factory is None:
                factory = build_market
            app.state.market = await asyncio.to_thread(factory, cfg, events_bus)
        m: Market = app.state.market
        if app.state.control is None:
            url = (settings or Settings.from_env()).control_database_url
            try:
                app.state.control = await asyncio.to_thread(ControlStore, url)
            except TegridError as exc:  # /control answers 503 until a restart can open it
                log.warning("%s", exc)
        if app.state.control is not None:  # the batteries' reported states of charge
            m.use_socs(app.state.control)
        if recover:
            try:  # recover never raises; this keeps the server starting if that ever breaks
                done = await asyncio.to_thread(m.recover)
            except Exception:
                log.exception("recovery failed; the scheduler retries the unfinished work")
                done = []
            if done:
                log.info("recovered batches of intervals %s", done)
        # Everything loaded so far (web3, SQLAlchemy, the grid model, ...) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it stalled the
        # event loop for tens of milliseconds (the API's p99).
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(_control_events(app, control_poll_seconds))]
        if scheduler:
            tasks.append(asyncio.create_task(_scheduler(app, tick_seconds)))
        stoppers = [fn(m) for fn in (background or [])]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for stop in stoppers:
                if callable(stop):
                    with contextlib.suppress(Exception):
                        stop()
            close_grid = getattr(m.grid, "close", None)  # a grid worker process
            if callable(close_grid):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(close_grid)

    # FastAPIOffline: /docs and /redoc load Swagger UI / ReDoc from the API's own static files
    # (their default pages fetch them from a CDN and are blank without internet)
    app = FastAPIOffline(
        title="tegrid market API",
        version="1",
        description=(
            "Wallet-signed (EIP-712) energy orders, network-aware double auction at gate closure, "
            'grid-validated batches recorded on chain. Errors: {"detail": {"code", "message"}}.'
        ),
        lifespan=lifespan,
    )
    app.state.market = market
    app.state.control = control_store
    app.state.events = events_bus
    app.state.options = options
    install_error_handlers(app)
    app.add_middleware(
        BodyLimits,
        limits=Limits(
            max_body_bytes=configured.api_max_body_bytes,
            max_json_depth=configured.api_max_json_depth,
            max_int_digits=configured.api_max_int_digits,
        ),
    )
    for module in (
        health, orders, intervals, trades, participants, devices, flex, control, grid, events,
    ):  # fmt: skip
        app.include_router(module.router)
    app.include_router(dashboard_router)
    _document_components(app, orders.openapi_schemas)
    return app


def _document_components(app: FastAPI, schemas: Callable[[], dict[str, Any]]) -> None:
    """Add ``schemas()`` to the OpenAPI components (bodies that routes read by hand), and
    document the errors every operation may answer as they are answered: a 422 is the JSON
    problem of :func:`install_error_handlers` (not FastAPI's default ``HTTPValidationError``),
    and an operation with a body may answer 413 (:class:`BodyLimits`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        doc = build()  # cached by FastAPI after the first call
        if fresh:
            known = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in schemas().items():
                known.setdefault(name, schema)
            known.update(_problem_schemas())
            for item in doc.get("paths", {}).values():
                for op in item.values():
                    responses = op.setdefault("responses", {})
                    responses["422"] = _PROBLEM_RESPONSES["422"]
                    if "requestBody" in op:
                        responses.setdefault("413", _PROBLEM_RESPONSES["413"])
            for unused in ("HTTPValidationError", "ValidationError"):
                known.pop(unused, None)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_schemas() -> dict[str, Any]:
    """``ErrorResponse`` and the models it uses, as FastAPI writes them."""
    probe = FastAPI()

    @probe.get("/", responses={400: {"model": ErrorResponse}})
    def _probe() -> None:  # pragma: no cover - never called
        return None

    found: dict[str, Any] = probe.openapi()["components"]["schemas"]
    return found


def _problem_response(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/ErrorResponse"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_PROBLEM_RESPONSES = {
    "413": _problem_response("Request body too large (BODY_TOO_LARGE)"),
    "422": _problem_response(
        "Invalid request: INVALID_REQUEST with the failing fields in ``errors``, or a body "
        "refused before parsing (BODY_TOO_DEEP, INTEGER_TOO_LONG, NON_FINITE_NUMBER), or a "
        "refusal of the market"
    ),
}
