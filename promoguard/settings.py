"""The command line's settings: the one :class:`config.settings.Settings` every deployable shares.

Kept as a module of its own so that ``from promoguard.settings import Settings`` (the notebooks, the
benchmarks, the tests) keeps working; the class lives in :mod:`config.settings`, where serving can
import it without importing the command line.
"""

from config.settings import DEV_PEPPER, InvalidSettings, Settings

__all__ = ["DEV_PEPPER", "InvalidSettings", "Settings"]
