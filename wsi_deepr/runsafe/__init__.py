"""Run safety: the output lock, the resumable scratch store, and the provenance record."""
