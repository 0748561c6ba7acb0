"""fairseq tasks of the user dir (registered on import)."""
