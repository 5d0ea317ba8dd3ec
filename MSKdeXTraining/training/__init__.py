"""Training of the decomposition model: config, prepared-dataset reader, trainer, checkpoints."""
