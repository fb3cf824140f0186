"""Training closures: the trainer (a-priori on pointwise samples), unrolled
a-posteriori training through the solver (`unroll`) and a-priori metrics
(`apriori`)."""
