# The public qjax.observers: the curated names and their documentation are qjax._src.observers's own (one list, one text,
# kept where the names are defined).
from ._src.observers import *  # noqa: F401,F403
from ._src.observers import __all__, __doc__  # noqa: F401
