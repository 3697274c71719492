"""`tinyvit.export`: the documented import path of :mod:`tinyvit.deploy.export`."""

from tinyvit.deploy.export import *  # noqa: F403
from tinyvit.deploy.export import __all__  # noqa: F401
