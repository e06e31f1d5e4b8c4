"""Training: the trainer, online EM, initialisation, checkpoints and run folders."""
