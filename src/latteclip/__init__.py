"""latteclip: adapt CLIP models to a domain without labels (LatteCLIP, CoFT, ReCLIP, FLYP + pseudo-labels)."""

__version__ = "0.1.0"
