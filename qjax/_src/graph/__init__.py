"""A small dataflow graph of qjax ops: what :func:`qjax.from_torch` returns.

:mod:`qjax.graph.model` holds the graph (:class:`QModel`, :class:`Node`, :class:`Ref`, the op
registry :data:`OPS`); :mod:`qjax.graph.ops` the node ops, registered on import — importing
:mod:`qjax.graph` is enough to run a QModel.  Importers (:mod:`qjax.interop`) and
:mod:`qjax.hardware` only build nodes naming registered ops.
"""

from .model import (OPS, GraphError, Node, QModel, Ref, Static, freeze, node_args, refs, register_op, substitute,
                    thaw)
from . import ops_inductor  # noqa: F401  (registers the inductor-lowering node ops)
from .ops import UNARY_KINDS  # importing ops registers the node ops
from . import ops_pt2e  # noqa: F401,E402 - registers the torch.export / pt2e node ops
from . import ops_dynamic  # noqa: F401,E402 - registers the dynamic-linear / embedding node ops
from . import ops_norm  # noqa: F401,E402 - registers the layer / group / instance norm node op
from . import ops_tflite  # noqa: F401,E402 - registers the LiteRT (TFLite) node ops

__all__ = ["Ref", "Node", "QModel", "register_op", "OPS", "Static", "GraphError", "substitute", "freeze", "thaw",
           "refs", "node_args", "UNARY_KINDS"]
