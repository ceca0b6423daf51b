"""Deprecated: the one wire module is :mod:`warpsvc_api.wire` (server and client). This alias keeps
``from warpsvc_client import wire`` working; new code imports ``warpsvc_api.wire``."""

from warpsvc_api.wire import *  # noqa: F403
