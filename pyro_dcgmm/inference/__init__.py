"""Queries of a trained stack: posteriors, log-likelihoods, sampling, in-painting."""
