"""The actors of the split-brain write-up: a simulated node, peer and validating signer."""
