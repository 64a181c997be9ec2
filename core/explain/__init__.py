"""One module per explanation view. Each is a pure function of (model, trace, options) -> DataFrame."""
