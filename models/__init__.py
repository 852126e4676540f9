"""Video flow models on flowkern (installed as flowkern.models)."""
from flowkern.models.videoflow import CONFIGS as VIDEOFLOW_CONFIGS
from flowkern.models.videoflow import VideoFlow, VideoFlowConfig

__all__ = ["VideoFlow", "VideoFlowConfig", "VIDEOFLOW_CONFIGS"]
