"""A-posteriori evaluation: the metrics (`metrics`), scoring LES runs against the
filtered DNS (`compare`) and the report with its figures (`report`)."""
