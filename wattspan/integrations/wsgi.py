"""WSGI middleware: one wattspan span per request, lasting until the response is sent.

    app = WattspanWSGIMiddleware(app)                   # Flask, Django, any WSGI app

* Request id: the ``X-Request-Id`` header (configurable; ``environ["HTTP_X_REQUEST_ID"]``),
  else a generated uuid4 hex; also in ``environ["wattspan.request_id"]``, and the span in
  ``environ["wattspan.span"]`` (a view can set ``environ["wattspan.span"].weight``).
* Span name: ``name`` if given (a string, or a callable ``environ -> str``), else the path
  (``PATH_INFO``; WSGI has no standard route template: pass ``name`` to avoid one span name
  per distinct URL). A view may also set ``environ["wattspan.span"].name``.
* The span ends when the response iterable is exhausted or closed, whichever comes first
  (PEP 3333 servers call ``close()``), so streaming responses are measured in full; it also
  ends if the application raises.
* wattspan never breaks the application: its own work is guarded, the application's
  exceptions propagate unchanged and the response's ``close()`` is always called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from wattspan.client import Span
from wattspan.integrations import begin_request_span

__all__ = ["WattspanWSGIMiddleware"]


class WattspanWSGIMiddleware:
    """Wrap each request of a WSGI application in a :func:`wattspan.span`."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *,
                 request_id_header: str = "X-Request-Id",
                 name: str | Callable[[dict], str] | None = None):
        self.app = app
        self.request_id_header = request_id_header
        self._environ_key = "HTTP_" + request_id_header.upper().replace("-", "_")
        self.name = name

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        span = self._begin(environ)
        try:
            result = self.app(environ, start_response)
        except BaseException:
            _end(span)
            raise
        if span is None:
            return result
        return _ClosingIterable(result, span)

    def _begin(self, environ: dict) -> Span | None:
        try:
            request_id = (environ.get(self._environ_key) or "").strip() or None
            return begin_request_span(environ, self.name, environ.get("PATH_INFO") or "/",
                                      request_id, environ.get("REQUEST_METHOD"))
        except Exception:
            return None


def _end(span: Span | None) -> None:
    if span is not None:
        try:
            span.__exit__(None, None, None)
        except Exception:
            pass


class _ClosingIterable:
    """The application's response, ending the span when exhausted or closed."""

    __slots__ = ("_result", "_iterator", "_span")

    def __init__(self, result: Iterable[bytes], span: Span):
        self._result = result
        self._iterator: Iterator[bytes] | None = None
        self._span: Span | None = span

    def __iter__(self) -> Iterator[bytes]:
        self._iterator = iter(self._result)
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._result)
        try:
            return next(self._iterator)
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            self._finish()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()

    def _finish(self) -> None:
        span, self._span = self._span, None
        _end(span)
