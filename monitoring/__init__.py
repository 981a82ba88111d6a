"""Readers of the scoring log: drift reports for the fraud team."""
