"""Replay of recorded history through the service's own decision path: backtests and their ledgers."""
