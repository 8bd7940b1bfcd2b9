"""Networks: the paper's 4-layer CNN (``conv4``) and the BatchNorms it can be built with."""
