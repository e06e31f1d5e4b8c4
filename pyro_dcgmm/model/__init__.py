"""The model: layers, covariance structures and the stacks built from them."""
