"""Edit the model card of an exported ONNX model: ``python -m export.card MODEL.onnx key=value ...``.

The card is the ONNX file's ``metadata_props`` (the top README's *Model
contract*); values measured after export — the halo chosen by an
output-error budget (``benchmarks/seams.py``), ``min_defocus_um``
(``benchmarks/min_defocus.py``) — are written into it here.  The file is
rewritten atomically, and its SHA-256 changes with it.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

__all__ = ["main", "set_card"]


def set_card(model_path: str | Path, **keys: object) -> str:
    """Set ``keys`` in the card of ``model_path`` (values as text); return the file's new SHA-256."""
    import onnx
    from onnx import helper

    from wsi_deepr.inference.card import load_model_info
    from wsi_deepr.writers.atomic import atomic_file

    model_path = Path(model_path)
    model = onnx.load(str(model_path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in keys.items()})
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    data = model.SerializeToString()
    with atomic_file(model_path) as fh:
        fh.write(data)
    load_model_info(model_path)  # the card still follows the contract
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("keys", nargs="+", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    pairs = dict(item.split("=", 1) for item in args.keys)
    print(set_card(args.model, **pairs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
