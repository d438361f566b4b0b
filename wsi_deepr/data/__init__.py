"""Training data: z-stack reading and registration, EDOF, pairing, the zarr pair format, builders.

Import the submodules directly (``wsi_deepr.data.build``, ``wsi_deepr.data.dataset``, ...):
this package imports nothing heavy on its own.
"""
