# The public qjax.float32: the curated names and their documentation are qjax._src.float32's own (one list, one text,
# kept where the names are defined).
from ._src.float32 import *  # noqa: F401,F403
from ._src.float32 import __all__, __doc__  # noqa: F401
