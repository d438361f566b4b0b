"""Focus: per-region defocus in µm (:mod:`.estimate`, :mod:`.map`), which windows to refocus
(:mod:`.select`), and focus QC reports (:mod:`.report`, :mod:`.render`, :mod:`.qc`)."""
