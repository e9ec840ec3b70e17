"""wattspan: the energy of each inference request and training step.

``wattspan.measure`` measures a block of code in-process; ``wattspan run -- CMD`` measures a
command; the ``wattspan agent`` sidecar attributes energy to concurrent requests.
"""

from wattspan.client import ClientStats, Span, client_stats, span
from wattspan.collectors.base import Quality
from wattspan.measure import Measurement, MeasurementResult, StepResult, measure

__all__ = ["ClientStats", "Measurement", "MeasurementResult", "Quality", "Span", "StepResult",
           "client_stats", "measure", "span"]
__version__ = "0.1.0"
