"""Configuration shared by every promoguard deployable: the one ``Settings`` class.

This package sits on the lowest floor with ``features``: the command line, the notebooks, training,
serving and monitoring may all import it, and it imports nothing above ``features``.
"""
