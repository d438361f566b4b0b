"""Writers of the refocused pyramid: OpenSlide-readable TIFF, OME-Zarr, format choice.

:mod:`.formats` picks the format from the output name (pure, no I/O);
:mod:`.generic_tiff` writes an Aperio-style tiled pyramidal TIFF that OpenSlide
and Bio-Formats read; :mod:`.omezarr` writes an NGFF 0.4 multiscale image.
"""
