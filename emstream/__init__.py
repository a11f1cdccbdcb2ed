"""emstream: a real-time, acquisition-side nanoparticle monitor for (environmental) TEM.

The data path is one direction::

    source -> Frame -> prepare -> segment -> measure -> FrameResult -> rules -> sinks
"""

from emstream.frame import Calibration, Frame
from emstream.results import Alert, FrameRecord, FrameResult

__version__ = "0.1.0"
__all__ = ["Alert", "Calibration", "Frame", "FrameRecord", "FrameResult", "__version__"]
