"""The labelled history generator for demos and tests: a data source, not a feature."""
