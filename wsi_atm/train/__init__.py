"""Training and evaluation: data folders, the cross-validation protocol, metrics."""
