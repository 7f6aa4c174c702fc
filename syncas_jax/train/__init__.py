"""Training stage: nested config, train state, the jitted step, data parallelism, the epoch loop."""
