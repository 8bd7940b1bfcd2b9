"""The exact core, without command lines: linear algebra (CG, Neumann, Hessian-vector
products) -> curvature -> inner solvers -> meta-gradient methods, their tasks, registries and
argument validation. Nothing here reads files or parses flags."""
