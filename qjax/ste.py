# The public qjax.ste: the curated names and their documentation are qjax._src.ste's own (one list, one text,
# kept where the names are defined).
from ._src.ste import *  # noqa: F401,F403
from ._src.ste import __all__, __doc__  # noqa: F401
