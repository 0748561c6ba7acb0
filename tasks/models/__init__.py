"""Models whose attention is a regattn mapping (registered with fairseq on import)."""
