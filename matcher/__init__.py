"""matcher: privacy-preserving joint-audience matching."""

__version__ = "0.1.0"
