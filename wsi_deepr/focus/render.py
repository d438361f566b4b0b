"""Pictures of a defocus map: the thumbnail overlay (PNG) and the self-contained HTML report.

Pure numpy + Pillow.  Colours run from green (in focus) through yellow and
orange to red and dark purple (:data:`VMAX_UM` µm and beyond); windows
without an estimate (glass, too little tissue, no contrast) stay uncoloured.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["VMAX_UM", "Overlay", "colorize", "crop_region", "display_ranges", "display_rgb", "render_html",
           "render_overlay", "slide_thumbnail"]

log = logging.getLogger(__name__)

#: top of the colour scale (µm); larger defocus takes the last colour
VMAX_UM = 6.0
#: colour anchors (µm, RGB): green in focus -> yellow -> orange -> red -> purple
_ANCHORS = ((0.0, (26, 152, 80)), (1.0, (145, 207, 96)), (2.0, (254, 224, 139)), (3.0, (252, 141, 89)),
            (4.5, (215, 48, 39)), (6.0, (118, 0, 86)))
_ALPHA = 0.45
_MIN_WIDTH = 640  # the PNG is at least this wide (a narrow thumbnail sits on the left), so the legend reads
_CROP_MAX = 768  # largest crop side (level-0 px) of a worst region in the HTML


@dataclass(frozen=True)
class Overlay:
    """The rendered overlay: ``image`` (thumbnail + legend strip) and its geometry.

    Attributes
    ----------
    image : PIL.Image.Image
        RGB picture: the thumbnail at the top left, the legend below it
        (at least 640 px wide).
    thumb_size : tuple of int
        ``(width, height)`` of the thumbnail part.
    scale : float
        Thumbnail pixels per level-0 pixel.
    """

    image: object
    thumb_size: tuple[int, int]
    scale: float


def colorize(values: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` colours of defocus ``values`` (µm); NaN gives black (callers mask it)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, VMAX_UM)
    stops = np.array([a for a, _ in _ANCHORS])
    colours = np.array([c for _, c in _ANCHORS], dtype=np.float64)
    out = np.stack([np.interp(v, stops, colours[:, k]) for k in range(3)], axis=-1)
    out[~np.isfinite(np.asarray(values, dtype=np.float64))] = 0
    return out.round().astype(np.uint8)


def display_ranges(slide, sample: np.ndarray) -> np.ndarray | None:
    """Per-channel ``(lo, hi)`` display range, or ``None`` for 8-bit brightfield RGB (shown as is)."""
    if slide.modality.value == "brightfield" and sample.shape[-1] == 3 and np.dtype(slide.dtype) == np.uint8:
        return None
    flat = sample.reshape(-1, sample.shape[-1]).astype(np.float64)
    if slide.modality.value == "brightfield":
        dt = np.dtype(slide.dtype)
        full = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
        return np.array([[0.0, full]] * flat.shape[1])
    lo, hi = np.percentile(flat, 1.0, axis=0), np.percentile(flat, 99.8, axis=0)
    return np.stack([lo, np.maximum(hi, lo + 1e-6)], axis=1)


def display_rgb(pixels: np.ndarray, ranges: np.ndarray | None) -> np.ndarray:
    """``(Y, X, 3)`` uint8 picture of slide pixels (fluorescence: first three channels as R, G, B)."""
    pix = np.asarray(pixels)
    if ranges is None:
        return np.ascontiguousarray(pix[..., :3].astype(np.uint8, copy=False))
    scaled = (pix.astype(np.float32) - ranges[:, 0]) / (ranges[:, 1] - ranges[:, 0])
    scaled = np.clip(scaled * 255.0, 0, 255).astype(np.uint8)
    c = scaled.shape[-1]
    if c == 1:
        return np.repeat(scaled, 3, axis=-1)
    if c == 2:
        return np.concatenate([scaled, np.zeros(scaled.shape[:-1] + (1,), np.uint8)], axis=-1)
    return np.ascontiguousarray(scaled[..., :3])


def slide_thumbnail(slide, *, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """The whole slide reduced to at most ``max_side`` px: ``(pixels in slide units, scale)``.

    Read from the coarsest pyramid level at least as large, in strips (a large
    level is never held whole); ``scale`` is thumbnail px per level-0 px.
    """
    from PIL import Image

    h0, w0 = slide.level_shapes[0][:2]
    scale = min(1.0, max_side / max(h0, w0))
    tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    level = 0
    for i, (ly, lx, _) in enumerate(slide.level_shapes):
        if lx >= tw and ly >= th:
            level = i
    ly, lx, lc = slide.level_shapes[level]
    step = max(1, 16_000_000 // max(1, lx * lc))
    bounds = [round(y * th / ly) for y in range(0, ly, step)] + [th]
    rows = []
    for k, y0 in enumerate(range(0, ly, step)):
        strip = np.asarray(slide.read_region(level, y0, 0, min(ly, y0 + step), lx))
        n = bounds[k + 1] - bounds[k]
        if n <= 0:
            continue
        planes = [np.asarray(Image.fromarray(strip[..., c].astype(np.float32)).resize((tw, n), Image.BOX))
                  for c in range(lc)]
        rows.append(np.stack(planes, axis=-1))
    return np.concatenate(rows, axis=0), tw / w0


def _font(size: int):
    """``(font, unicode)``: DejaVu Sans when installed (has µ and ≥), else Pillow's default font (ASCII only)."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size), False
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default(), False


def _text(label: str, unicode: bool) -> str:
    return label if unicode else label.replace("µ", "u").replace("≥", ">=")


def _legend(width: int):
    """The legend strip: a colour bar 0..VMAX µm with ticks and a caption."""
    from PIL import Image, ImageDraw

    fs = max(11, min(16, width // 60))
    height = 5 * fs + 24
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, uni = _font(fs)
    x0, x1, y0 = fs, max(fs + 10, width - 2 * fs), 6
    bar_h = fs + 2
    bar = colorize(np.linspace(0.0, VMAX_UM, max(2, x1 - x0)))
    img.paste(Image.fromarray(np.repeat(bar[None], bar_h, axis=0)), (x0, y0))
    draw.rectangle([x0, y0, x1 - 1, y0 + bar_h], outline=(60, 60, 60))
    for tick in range(int(VMAX_UM) + 1):
        x = x0 + round(tick / VMAX_UM * (x1 - x0 - 1))
        draw.line([x, y0 + bar_h, x, y0 + bar_h + 4], fill=(60, 60, 60))
        label = _text(f"≥{tick}", uni) if tick == int(VMAX_UM) else str(tick)
        tw = draw.textlength(label, font=font)
        draw.text((min(max(0, x - tw / 2), width - tw), y0 + bar_h + 5), label, fill=(0, 0, 0), font=font)
    for k, line in enumerate(("defocus |z| in µm (estimated distance from the focal plane)",
                              "uncoloured: no estimate (glass, little tissue); numbered boxes: worst regions")):
        draw.text((x0, y0 + 2 * bar_h + 8 + k * (fs + 4)), _text(line, uni), fill=(0, 0, 0), font=font)
    return img


def render_overlay(slide, dmap, *, worst: list[dict] | None = None, max_side: int = 1024,
                   thumb: tuple[np.ndarray, float] | None = None) -> Overlay:
    """The slide thumbnail with the defocus heatmap overlaid, worst regions numbered, legend below.

    Parameters
    ----------
    slide : Slide
        The slide of ``dmap``.
    dmap : DefocusMap
        The defocus map.
    worst : list of dict, optional
        Worst regions (``x, y, width, height``) to outline and number, in rank order.
    max_side : int
        Longest side of the thumbnail part.
    thumb : (numpy.ndarray, float), optional
        A thumbnail already read with :func:`slide_thumbnail`.
    """
    from PIL import Image, ImageDraw

    pixels, scale = thumb if thumb is not None else slide_thumbnail(slide, max_side=max_side)
    base = display_rgb(pixels, display_ranges(slide, pixels)).astype(np.float32)
    th, tw = base.shape[:2]
    colour = colorize(dmap.defocus_um)
    for i, (x, y, w, h) in enumerate(np.asarray(dmap.boxes)):
        if not np.isfinite(dmap.defocus_um[i]):
            continue
        a0, b0 = int(round(y * scale)), int(round(x * scale))
        a1, b1 = max(a0 + 1, int(round((y + h) * scale))), max(b0 + 1, int(round((x + w) * scale)))
        base[a0:a1, b0:b1] = (1 - _ALPHA) * base[a0:a1, b0:b1] + _ALPHA * colour[i]
    picture = Image.fromarray(base.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font, _ = _font(max(10, min(16, tw // 50)))
    for rank, reg in enumerate(worst or [], start=1):
        box = [reg["x"] * scale, reg["y"] * scale, (reg["x"] + reg["width"]) * scale - 1,
               (reg["y"] + reg["height"]) * scale - 1]
        draw.rectangle(box, outline=(0, 0, 0), width=3)
        draw.rectangle(box, outline=(255, 255, 255), width=1)
        draw.text((box[0] + 3, box[1] + 2), str(rank), fill=(255, 255, 255), font=font, stroke_width=2,
                  stroke_fill=(0, 0, 0))
    legend = _legend(max(tw, _MIN_WIDTH))
    out = Image.new("RGB", (legend.width, th + legend.height), (255, 255, 255))
    out.paste(picture, (0, 0))
    out.paste(legend, (0, th))
    return Overlay(image=out, thumb_size=(tw, th), scale=scale)


def crop_region(slide, region: dict, *, ranges: np.ndarray | None = None, max_side: int = _CROP_MAX):
    """A worst region read at full resolution (level 0), centre-cropped to ``max_side``; RGB PIL image."""
    from PIL import Image

    h0, w0 = slide.level_shapes[0][:2]
    w, h = min(region["width"], max_side), min(region["height"], max_side)
    x0 = min(max(0, region["x"] + (region["width"] - w) // 2), max(0, w0 - w))
    y0 = min(max(0, region["y"] + (region["height"] - h) // 2), max(0, h0 - h))
    pix = slide.read_region(0, y0, x0, min(h0, y0 + h), min(w0, x0 + w))
    return Image.fromarray(display_rgb(pix, ranges)), (int(x0), int(y0), int(pix.shape[1]), int(pix.shape[0]))


def side_by_side(left, right, *, gap: int = 6):
    """Two PIL images next to each other on white (before | after crops), heights matched to the left's."""
    from PIL import Image

    if right.height != left.height:
        right = right.resize((max(1, round(right.width * left.height / right.height)), left.height))
    out = Image.new("RGB", (left.width + gap + right.width, left.height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _data_uri(img, fmt: str) -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#f5f5f7}main{max-width:1180px;margin:0 auto;padding:24px}h1{font-size:1.5em;margin:0 0 4px}
h2{font-size:1.15em;margin:28px 0 10px}.sub{color:#555;font-size:.9em;word-break:break-all}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:16px;margin-bottom:16px}
.overlay img{max-width:100%;max-height:92vh;width:auto;height:auto;display:block;margin:0 auto}
table{border-collapse:collapse;width:100%;max-width:760px}
td,th{padding:6px 10px;border-bottom:1px solid #e5e5e5;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.verdict{font-size:1.1em;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:16px}
.grid figure{margin:0;background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);overflow:hidden}
.grid img{width:100%;height:auto;display:block}.grid figcaption{padding:8px 10px;font-size:.88em}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle;margin-right:6px;
border:1px solid #888}.muted{color:#777}
"""


def _fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _summary_rows(doc: dict) -> list[tuple[str, str]]:
    s = doc["summary"]
    area = (_fmt(s["tissue_area_mm2"], " mm²") if s["tissue_area_mm2"] is not None
            else f"{s['tissue_area_px']:.3g} px² (µm/px unknown)")
    rows = [("Tissue area", area),
            ("Tissue with an estimate", _pct(s["estimated_share"])),
            (f"In focus (≤ {doc['threshold_um']:g} µm)", _pct(s["in_focus_share"]))]
    rows += [(f"Defocus above {t} µm", _pct(s[f"share_above_{t}um"])) for t in (1, 2, 3, 5)]
    rows += [("Median defocus", _fmt(s["median_defocus_um"], " µm")),
             ("95th percentile defocus", _fmt(s["p95_defocus_um"], " µm")),
             ("Worst defocus", _fmt(s["max_defocus_um"], " µm")),
             ("Windows (with tissue / estimated)",
              f"{s['windows']} ({s['tissue_windows']} / {s['estimated_windows']})"),
             ("Window size", f"{doc['window']} px" + (f" = {doc['window'] * doc['mpp']:.0f} µm"
                                                       if doc["mpp"] else "")),
             ("µm/px (level 0)", _fmt(doc["mpp"], digits=4)),
             ("Method", html.escape(str(doc["method"]))),
             ("Map time", _fmt(doc["seconds"], " s", 1))]
    return rows


def render_html(doc: dict, overlay_png: bytes, crops: list[tuple[object, tuple[int, int, int, int]]]) -> str:
    """The self-contained HTML report (images as base64 data URIs, inline CSS, no scripts).

    Parameters
    ----------
    doc : dict
        The QC JSON document (see :func:`wsi_deepr.focus.report.qc_document`).
    overlay_png : bytes
        The overlay PNG.
    crops : list
        ``(PIL image, (x, y, width, height))`` of each worst region, in rank order.
    """
    s = doc["summary"]
    name = html.escape(doc["slide_name"])
    uri = "data:image/png;base64," + base64.b64encode(overlay_png).decode("ascii")
    if s["median_defocus_um"] is None:
        verdict = "No defocus estimate: no tissue with enough contrast was found."
    else:
        verdict = (f"{_pct(s['in_focus_share'])} of the estimated tissue is in focus; "
                   f"{_pct(s['share_above_3um'])} is more than 3 µm out of focus.")
    table = "".join(f"<tr><th>{k}</th><td class=num>{v}</td></tr>" for k, v in _summary_rows(doc))
    figures = []
    for rank, (reg, (img, (x, y, w, h))) in enumerate(zip(s["worst_regions"], crops), start=1):
        colour = "#%02x%02x%02x" % tuple(colorize(np.array([reg["defocus_um"]]))[0])
        where = f"x {reg['x']}, y {reg['y']}, {reg['width']}×{reg['height']} px"
        if doc["mpp"]:
            where += f" (at {reg['x'] * doc['mpp'] / 1000:.2f}, {reg['y'] * doc['mpp'] / 1000:.2f} mm)"
        shown = ("" if (w, h) == (reg["width"], reg["height"])
                 else f"<br><span class=muted>centre {w}×{h} px shown</span>")
        figures.append(
            f"<figure><img src=\"{_data_uri(img, 'JPEG')}\" alt=\"worst region {rank}\" width={img.width} "
            f"height={img.height}>"
            f"<figcaption><span class=swatch style=\"background:{colour}\"></span><b>#{rank}: "
            f"{reg['defocus_um']:.2f} µm</b> · confidence {reg['confidence']:.2f} · tissue "
            f"{100 * reg['tissue']:.0f} %<br>{where}{shown}</figcaption></figure>")
    if doc.get("crops") == "before | after":
        figures.insert(0, "<p class=muted>Each crop: as scanned (left) and refocused (right).</p>")
    worst = ("<div class=grid>" + "".join(figures) + "</div>" if figures
             else "<p class=muted>No region has an estimate.</p>")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content=\"width=device-width,initial-scale=1\">"
        f"<title>Focus QC: {name}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>Focus QC: {name}</h1><div class=sub>{html.escape(doc['slide'])} · wsi-deepr "
        f"{html.escape(doc['wsi_deepr_version'])} · {html.escape(doc['created'])}</div>"
        f"<div class=\"card verdict\">{verdict}</div>"
        f"<div class=\"card overlay\"><img src=\"{uri}\" alt=\"defocus map of {name}\" "
        f"width={doc['overlay']['width']} height={doc['overlay']['height']}></div>"
        f"<h2>Summary</h2><div class=card><table>{table}</table></div>"
        f"<h2>Worst regions (full resolution)</h2>{worst}"
        "<p class=muted>Shares are of the tissue area that has an estimate. Defocus is the estimated distance "
        "|z| from the focal plane; regions are numbered as on the map.</p>"
        "</main></body></html>\n"
    )
