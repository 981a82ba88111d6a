"""Raw redemption events -> identity keys -> features (batch, Feast and real-time velocity)."""

#: The public development pepper for identity hashing. Hashes keyed with it can be reversed by anyone
#: holding a list of emails, so every deployable compares its pepper with this one and warns. Kept here
#: rather than in ``features.identity`` so settings can name it without importing the parsers.
DEV_PEPPER = "promoguard-dev-pepper-do-not-use-in-production"
