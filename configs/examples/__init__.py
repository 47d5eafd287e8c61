"""Worker targets used by the example configurations in this folder."""
