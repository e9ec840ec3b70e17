"""ASGI middleware: one wattspan span per HTTP request.

    app = WattspanMiddleware(app)                       # Starlette, FastAPI, any ASGI app

* Request id: the ``x-request-id`` header (configurable), else a generated uuid4 hex. It is
  also put in ``scope["wattspan.request_id"]``, and the span in ``scope["wattspan.span"]``,
  so a handler can set the weight (``request.scope["wattspan.span"].weight = n_tokens``).
* Span name: ``name`` if given (a string, or a callable ``scope -> str``); else the route
  template when the framework exposes it after routing (Starlette and FastAPI put the
  matched route in ``scope["route"]``; its ``.path``, e.g. ``/items/{item_id}``, is sent as
  the final name in END), else the request path. Prefer route templates or a fixed name:
  span names become metric dimensions, raw paths can have unbounded cardinality.
* The span lasts until the application returns, i.e. after the last body chunk was sent
  (streaming responses included).
* Only ``http`` scopes are measured; ``lifespan`` and ``websocket`` scopes pass through
  untouched (a websocket connection can stay open for hours and is not one request).
* wattspan never breaks the application: the middleware's own work is guarded, and the
  application's exceptions propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from wattspan.client import Span
from wattspan.integrations import begin_request_span

__all__ = ["WattspanMiddleware"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class WattspanMiddleware:
    """Wrap each HTTP request of an ASGI 3 application in a :func:`wattspan.span`."""

    def __init__(self, app: ASGIApp, *, request_id_header: str = "x-request-id",
                 name: str | Callable[[Scope], str] | None = None):
        self.app = app
        self.request_id_header = request_id_header
        self._header = request_id_header.lower().encode("latin-1")
        self.name = name

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        span = self._begin(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            if span is not None:
                self._end(scope, span)

    def _begin(self, scope: Scope) -> Span | None:
        try:
            request_id = None
            for key, value in scope.get("headers") or ():
                if key.lower() == self._header:
                    request_id = value.decode("latin-1").strip() or None
                    break
            return begin_request_span(scope, self.name, scope.get("path") or "/", request_id,
                                      scope.get("method"))
        except Exception:
            return None

    def _end(self, scope: Scope, span: Span) -> None:
        try:
            if self.name is None:
                route = scope.get("route")
                template = getattr(route, "path", None) if route is not None else None
                if isinstance(template, str) and template:
                    span.name = template
            span.__exit__(None, None, None)
        except Exception:
            pass
