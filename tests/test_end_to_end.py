"""Every shared slide through ``refocus`` → an OME-TIFF that Bio-Formats opens right.

Bio-Formats (QuPath's reader) must see the pyramid as ONE series with all
resolutions, the right size, pixel type, µm/px and RGB flag; further series are
only the carried-over associated images.  The output is also read back with
wsi-deepr's own reader and its provenance checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from wsi_deepr import open_slide, refocus
from wsi_deepr.imaging.pyramid import pyramid_shapes

from . import bioformats_info as bf
from .builders import mono_card
from .conftest import shared_path

SLIDES = [
    # name, model kind, expected (Y, X, C), dtype, rgb, mpp
    ("CMU-1-Small-Region.svs", "rgb", (2967, 2220, 3), "uint8", True, 0.499),
    ("tcga-cr-7395-01a-01-ts1.svs", "rgb", (3567, 4443, 3), "uint8", True, None),
    ("small.svs", "rgb", (16, 16, 3), "uint8", True, 0.499),
    ("boxes.tiff", "rgb", (250, 300, 3), "uint8", True, None),
    ("small_vectra.qptiff", "mono", (1440, 1920, 3), "uint8", False, 0.4966),
    ("smalltif.tif", "mono", (480, 640, 1), "uint16", False, None),
]


@pytest.fixture(scope="module")
def models(rgb_model, model_factory):
    return {"rgb": rgb_model, "mono": model_factory("mono", mono_card(), channels=1, seed=1)}


@pytest.mark.slow
@pytest.mark.bioformats
@pytest.mark.parametrize(("name", "kind", "shape", "dtype", "rgb", "mpp"), SLIDES, ids=[s[0] for s in SLIDES])
def test_refocused_output_opens_in_bioformats(tmp_path, models, name, kind, shape, dtype, rgb, mpp) -> None:
    src = shared_path("slides", name)
    out = tmp_path / "out.ome.tif"
    result = refocus(src, out, model=models[kind], tile=256, workers=2)
    assert result.output == out
    assert out.exists()
    # no temporary, scratch or lock left; the provenance sidecar beside the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ome.tif", "out.ome.tif.json"]

    info = bf.image_info(out)
    main = info.series[0]
    n_levels = len(pyramid_shapes(shape[:2]))
    assert main.resolution_count == n_levels
    assert (main.size_y, main.size_x) == shape[:2]
    assert main.pixel_type == dtype
    assert main.rgb is rgb
    assert main.size_c == shape[2]
    if mpp is None:
        assert main.physical_size_x is None
    else:
        assert main.physical_size_x == pytest.approx(mpp, rel=1e-3)
        assert main.physical_size_y == pytest.approx(mpp, rel=1e-3)
    source = open_slide(src)
    extra = sorted(s.name for s in info.series[1:])
    assert extra == sorted(source.associated)

    # our own reader opens the output with the same metadata
    back = open_slide(out)
    assert back.shape == source.shape
    assert back.dtype == source.dtype
    assert back.channel_names == source.channel_names
    assert back.level_count == n_levels
    if mpp is not None:
        assert back.mpp == pytest.approx(source.mpp, rel=1e-6)

    with tifffile.TiffFile(out) as tif:
        xml = tif.ome_metadata
    assert "wsi_deepr.model_sha256" in xml
    assert result.model_sha256 in xml
    stats = json.loads(tifffile.xml2dict(xml)["OME"]["StructuredAnnotations"]["MapAnnotation"]["Value"]["M"][
        [m["K"] for m in tifffile.xml2dict(xml)["OME"]["StructuredAnnotations"]["MapAnnotation"]["Value"]["M"]]
        .index("wsi_deepr.normalization")]["value"])
    assert stats["offset"] == list(result.stats.offset)


def test_end_to_end_equals_whole_image_inference(tmp_path, models) -> None:
    """Reader, slide statistics, tiling, blending and lossless writing, end to end.

    The 16-bit fluorescence slide is refocused in small tiles; the written
    pixels equal the model run once on the whole normalised image (±1 for
    rounding at exact .5 ties), at every pixel.
    """
    import onnxruntime as ort

    src = shared_path("slides", "smalltif.tif")
    out = tmp_path / "out.ome.tif"
    result = refocus(src, out, model=models["mono"], tile=64, overlap=8, batch=3, workers=2)
    assert result.windows > 50  # really tiled
    image = open_slide(src).read_region(0, 0, 0, 480, 640)
    halo = 4
    x = np.pad(result.stats.normalize(image), ((halo, halo), (halo, halo), (0, 0)), mode="reflect")
    session = ort.InferenceSession(str(models["mono"]), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": x.transpose(2, 0, 1)[None]})[0][0].transpose(1, 2, 0)
    expected = np.clip(np.rint(result.stats.denormalize(y[halo:-halo, halo:-halo])), 0, 65535)
    written = tifffile.imread(out, series=0, level=0)
    assert written.shape == (480, 640)
    assert np.abs(written.astype(np.int64) - expected[..., 0].astype(np.int64)).max() <= 1
