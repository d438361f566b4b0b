"""The Deep-R training stage (PyTorch): networks, losses, training, ONNX export, evaluation.

Run from the repository root with the ``train`` extra installed
(``pip install -e ".[train]"``)::

    python -m export.train --dataset D.zarr --out RUN_DIR
    python -m export.onnx_export RUN_DIR --out model.onnx
    python -m export.evaluate model.onnx --dataset VAL.zarr --smear ../shared/data/stacks/smear-brightfield

Nothing in :mod:`wsi_deepr` imports this package (or torch).
"""
