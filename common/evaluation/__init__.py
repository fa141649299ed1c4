"""What a run measured: continual-learning metrics over accuracy matrices, the run's
results and its folder, and `dkt compare`'s tables."""
