"""The pluggy markers of the ``qsgt_plugin`` host: the bottom of the package.

Plugins (the built-in ones included) mark their hook implementations with :data:`hookimpl`;
:mod:`qsgt_plugin.hookspecs` declares the hooks with :data:`hookspec`. This module imports
nothing of the project, so any part can mark a hook without importing the specifications.
"""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "qsgt_plugin"
"""The pluggy project name and the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
