"""Style transfer: the perceptual loss and its parts, Gatys optimization (gatys) and feed-forward networks (fast)."""
