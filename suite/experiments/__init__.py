"""The studies built on the core and the harness, one command each: sweeps, the paper's
figures and Table 1, the regression gate, peers, learned lam, Omniglot."""
