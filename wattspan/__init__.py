"""wattspan: the energy of each inference request and training step.

``wattspan.measure`` measures a block of code in-process; ``wattspan run -- CMD`` measures a
command; the ``wattspan agent`` sidecar attributes energy to concurrent requests.
"""

from wattspan.collectors.base import Quality
from wattspan.measure import Measurement, MeasurementResult, StepResult, measure

__all__ = ["Measurement", "MeasurementResult", "Quality", "StepResult", "measure"]
__version__ = "0.1.0"
