"""promoguard: the application shell (command line and typed settings). Domain logic lives in
``features``, ``training`` and ``serving``."""

__version__ = "0.1.0"
