"""The normalization study: output variance and test error against gamma and
width (`normalization`)."""
