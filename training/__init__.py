"""Features and labels -> a calibrated, explained, registered abuse model."""
