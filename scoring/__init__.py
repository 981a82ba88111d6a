"""The meaning of a score, defined once: the model artifact, calibration, bands, thresholds, decisions,
the rules table, signals and the serving decision path (:class:`scoring.scorer.Scorer`)."""
