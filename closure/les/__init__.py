"""The coupled LES: the coarse solver with a closure in its time stages
(`coupled`) and the classical closures (`baselines`)."""
