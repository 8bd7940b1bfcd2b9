"""Omniglot few-shot pipeline: data, task sampler, meta-training and evaluation."""
