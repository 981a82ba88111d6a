"""Raw redemption events -> identity keys -> features (batch, Feast and real-time velocity)."""
