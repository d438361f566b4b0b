"""Writers: the refocused pyramid as a file (pyramidal OME-TIFF), written atomically, and output paths."""
