"""Deprecated: the message converters moved to :mod:`warpsvc_api.convert` (shared by server and
client). This alias keeps ``from warpsvc_client import convert`` working; new code imports
``warpsvc_api.convert``."""

from warpsvc_api.convert import *  # noqa: F403
from warpsvc_api.convert import image_message as image  # noqa: F401 - the old name
