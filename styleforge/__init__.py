"""styleforge: neural style transfer and transfer learning on PyTorch."""

from .errors import StyleforgeError
from .transfer import Progress, StylizeConfig, StylizeResult, stylize

__all__ = ["StyleforgeError", "Progress", "StylizeConfig", "StylizeResult", "stylize"]
__version__ = "0.1.0"
