"""Writers: the refocused pyramid as a file (pyramidal OME-TIFF, OpenSlide-readable TIFF, OME-Zarr), written atomically, and output paths."""
