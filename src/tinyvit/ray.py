"""`tinyvit.ray`: the documented import path of :mod:`tinyvit.deploy.ray`."""

from tinyvit.deploy.ray import *  # noqa: F403
from tinyvit.deploy.ray import __all__  # noqa: F401
