"""fairseq criterions of the user dir (registered on import)."""
