"""Hugging Face ``Trainer`` callback: one wattspan span per training step.

    from wattspan.integrations.transformers import WattspanCallback
    trainer = Trainer(..., callbacks=[WattspanCallback()])

Each optimizer step (``on_step_begin`` .. ``on_step_end``, gradient accumulation included) is
a span named ``"train_step"`` (configurable) whose request id is the step number (1-based,
``state.global_step`` after the step). The weight, set at the end of the step:

* ``"tokens"``: the input tokens the step consumed, from ``state.num_input_tokens_seen``
  (counted by the Trainer when ``include_num_input_tokens_seen=True``);
* ``"samples"``: the samples this process trained on in the step,
  ``per_device_train_batch_size * gradient_accumulation_steps``;
* ``"auto"`` (default): tokens when the Trainer counts them, else samples;
* ``None``: 1.

Every rank of a distributed run is its own process and sends its own spans. The class
subclasses ``transformers.TrainerCallback`` when transformers is importable, else a plain
class with the same methods (so it can be built and tested without transformers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from wattspan.client import Span

__all__ = ["WattspanCallback"]

try:  # optional dependency
    from transformers import TrainerCallback as _CallbackBase
except Exception:  # not installed (or broken): the same interface, doing nothing

    class _CallbackBase:  # type: ignore[no-redef]
        """Stands in for ``transformers.TrainerCallback``: every event does nothing."""

        def on_init_end(self, args, state, control, **kwargs): pass
        def on_train_begin(self, args, state, control, **kwargs): pass
        def on_train_end(self, args, state, control, **kwargs): pass
        def on_epoch_begin(self, args, state, control, **kwargs): pass
        def on_epoch_end(self, args, state, control, **kwargs): pass
        def on_step_begin(self, args, state, control, **kwargs): pass
        def on_pre_optimizer_step(self, args, state, control, **kwargs): pass
        def on_optimizer_step(self, args, state, control, **kwargs): pass
        def on_substep_end(self, args, state, control, **kwargs): pass
        def on_step_end(self, args, state, control, **kwargs): pass
        def on_evaluate(self, args, state, control, **kwargs): pass
        def on_predict(self, args, state, control, metrics, **kwargs): pass
        def on_save(self, args, state, control, **kwargs): pass
        def on_log(self, args, state, control, **kwargs): pass
        def on_prediction_step(self, args, state, control, **kwargs): pass


_WEIGHTS = ("auto", "tokens", "samples", None)


class WattspanCallback(_CallbackBase):
    """A span per training step (see the module's documentation)."""

    def __init__(self, name: str = "train_step", *, weight: str | None = "auto",
                 devices: Iterable[str | int] | None = None,
                 attributes: Mapping[str, str | int | float | bool] | None = None):
        if weight not in _WEIGHTS:
            raise ValueError(f"weight must be one of {_WEIGHTS}, not {weight!r}")
        self.name = name
        self.weight = weight
        self.devices = devices
        self.attributes = attributes
        self._span: Span | None = None
        self._tokens_at_begin: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        try:
            if self._span is not None:  # a step that never ended (should not happen)
                self._span.__exit__(None, None, None)
            step = int(getattr(state, "global_step", 0) or 0) + 1
            self._tokens_at_begin = _tokens_seen(state)
            self._span = Span(self.name, request_id=str(step), devices=self.devices,
                              attributes=self.attributes).__enter__()
        except Exception:
            self._span = None

    def on_step_end(self, args, state, control, **kwargs):
        span, self._span = self._span, None
        if span is None:
            return
        try:
            weight = self._step_weight(args, state)
            if weight is not None:
                span.weight = weight
        except Exception:
            pass
        span.__exit__(None, None, None)

    def on_train_end(self, args, state, control, **kwargs):
        span, self._span = self._span, None
        if span is not None:
            span.__exit__(None, None, None)

    def _step_weight(self, args, state) -> float | None:
        if self.weight is None:
            return None
        if self.weight in ("auto", "tokens"):
            before, after = self._tokens_at_begin, _tokens_seen(state)
            if before is not None and after is not None and after > before:
                return float(after - before)
            if self.weight == "tokens":
                return None
        return _samples_per_step(args)


def _tokens_seen(state: Any) -> int | None:
    value = getattr(state, "num_input_tokens_seen", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _samples_per_step(args: Any) -> float | None:
    batch = getattr(args, "per_device_train_batch_size", None)
    accumulation = getattr(args, "gradient_accumulation_steps", 1) or 1
    if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0:
        return float(batch * int(accumulation))
    return None
