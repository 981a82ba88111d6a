"""A checkout request -> a risk score, band, decision and the signals behind it."""
