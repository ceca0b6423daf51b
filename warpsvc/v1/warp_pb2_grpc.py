"""Deprecated alias: ``from warpsvc_api.v1 import warp_pb2_grpc`` (the same objects)."""

from warpsvc_api.v1.warp_pb2_grpc import *  # noqa: F403
