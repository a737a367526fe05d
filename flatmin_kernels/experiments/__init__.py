"""Small reproducible experiments on scikit-learn's digits: the demo and the edge-of-stability run."""
