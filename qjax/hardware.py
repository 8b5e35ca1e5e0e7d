# The public qjax.hardware: the curated names and their documentation are qjax._src.hardware's own (one list, one text,
# kept where the names are defined).
from ._src.hardware import *  # noqa: F401,F403
from ._src.hardware import __all__, __doc__  # noqa: F401
