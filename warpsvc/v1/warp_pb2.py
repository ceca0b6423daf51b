"""Deprecated alias: ``from warpsvc_api.v1 import warp_pb2`` (the same module objects)."""

from warpsvc_api.v1.warp_pb2 import *  # noqa: F403
from warpsvc_api.v1.warp_pb2 import DESCRIPTOR  # noqa: F401
