"""The daemon's pipeline: per camera ingest -> STC-Cacher -> pruner -> ReKV memory.

:class:`ModelWorker` is the engine's real worker (the video LLM, one :class:`VisionChain` per
camera and the memory of all cameras); :class:`CameraFeed` runs one camera's ingest and hands its
frames (each stamped with its source session by ingest) to the engine and the camera board.
:mod:`stream_agent.pipeline.stages` is the one module that calls the stage packages.
"""

from stream_agent.models.loading import ModelLoader
from stream_agent.pipeline.alerts import CheckTimeout, EngineAlerts
from stream_agent.pipeline.errors import ModelUnavailableError, NothingSeenError, PipelineError
from stream_agent.pipeline.feed import CameraFeed
from stream_agent.pipeline.stages import ChainSettings, ChainStats, VisionChain
from stream_agent.pipeline.worker import ModelWorker

__all__ = [
    "CameraFeed",
    "ChainSettings",
    "ChainStats",
    "CheckTimeout",
    "EngineAlerts",
    "ModelLoader",
    "ModelUnavailableError",
    "ModelWorker",
    "NothingSeenError",
    "PipelineError",
    "VisionChain",
]
