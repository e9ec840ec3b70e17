"""Integrations with servers and training loops (ASGI, WSGI, Hugging Face Trainer)."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from typing import Any

from wattspan.client import Span


def begin_request_span(carrier: MutableMapping[str, Any], name, default_name: str,
                       request_id: str | None, method: str | None) -> Span:
    """Begin the span of one HTTP request, for the ASGI and WSGI middlewares.

    ``name`` is the middleware's setting (None, a string, or a callable of ``carrier``);
    ``carrier`` (the ASGI scope or WSGI environ) gets the span and request id, so handlers can
    set the weight (e.g. tokens). A missing request id is generated.
    """
    if name is None:
        name = default_name
    elif callable(name):
        name = name(carrier)
    request_id = request_id or uuid.uuid4().hex
    span = Span(name, request_id=request_id,
                attributes={"http.request.method": method} if method else None)
    carrier["wattspan.request_id"] = request_id
    carrier["wattspan.span"] = span
    return span.__enter__()
