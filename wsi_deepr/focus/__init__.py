"""Focus: per-region defocus in µm (:mod:`.estimate`, :mod:`.map`) and focus QC reports (:mod:`.report`)."""
