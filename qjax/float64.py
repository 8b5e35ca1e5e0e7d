# The public qjax.float64: the curated names and their documentation are qjax._src.float64's own (one list, one text,
# kept where the names are defined).
from ._src.float64 import *  # noqa: F401,F403
from ._src.float64 import __all__, __doc__  # noqa: F401
