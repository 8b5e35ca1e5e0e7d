# The public qjax.nn: the curated names and their documentation are qjax._src.nn's own (one list, one text,
# kept where the names are defined).
from ._src.nn import *  # noqa: F401,F403
from ._src.nn import __all__, __doc__  # noqa: F401
