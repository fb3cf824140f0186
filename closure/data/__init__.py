"""Training data: filters and restriction, the exact SGS term, the dataset schema
(CF netCDF), DNS generation on dask, streaming of samples, and the translation of
a config into solver objects (`system`)."""
