"""Export, validation and publication of results."""
