"""Deprecated alias of :mod:`warpsvc_api.v1` (the generated code moved to the ``warpsvc_api``
package). Kept so ``from warpsvc.v1 import warp_pb2`` keeps working; new code imports
``warpsvc_api.v1``."""
