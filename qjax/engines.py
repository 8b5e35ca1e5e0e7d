# The public qjax.engines: the curated names and their documentation are qjax._src.engines's own (one list, one text,
# kept where the names are defined).
from ._src.engines import *  # noqa: F401,F403
from ._src.engines import __all__, __doc__  # noqa: F401
