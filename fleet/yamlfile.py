"""Moved to `soundpoint.yamlfile` (shared with the lab); this re-export goes once every importer has moved."""
from soundpoint.yamlfile import *  # noqa: F401,F403
