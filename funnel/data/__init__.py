"""Data sources. Every source writes one canonical dataset directory (see ``canonical``)."""
