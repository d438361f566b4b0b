"""OME-XML for the single-file OME-TIFFs written by :mod:`wsi_deepr.writers.ometiff`.

Only what wsi-deepr writes is modelled: a few Images, each one plane per channel
(or one interleaved RGB plane) stored in consecutive top-level IFDs, with the
reduced resolutions of a pyramid in SubIFDs (which OME-XML does not describe),
and one ``MapAnnotation`` of provenance key/values referenced from the first
Image.  Store the text UTF-8 encoded, not with ``&#NNN;`` character references:
Bio-Formats 7.3 turns those into `` #NNN;`` when it reads them.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["OME_NAMESPACE", "OmeImage", "build_ome_xml", "ome_pixel_type"]

OME_NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_ANNOTATION_NAMESPACE = "wsi-deepr/provenance"

_PIXEL_TYPES = {
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "float32": "float",
    "float64": "double",
}


def ome_pixel_type(dtype: np.dtype | str | type) -> str:
    """Return the OME ``Pixels/@Type`` of a numpy dtype.

    Raises
    ------
    ValueError
        If OME-TIFF has no pixel type for ``dtype``.
    """
    key = np.dtype(dtype).name
    try:
        return _PIXEL_TYPES[key]
    except KeyError:
        raise ValueError(
            f"dtype {key} cannot be stored in OME-TIFF: use one of "
            + ", ".join(_PIXEL_TYPES)
        ) from None


@dataclass(frozen=True)
class OmeImage:
    """One OME Image stored in consecutive top-level IFDs.

    Attributes
    ----------
    name : str
        ``Image/@Name``.
    size_y, size_x, size_c : int
        Full-resolution height, width and number of channels (samples).
    dtype : numpy.dtype
        Pixel data type.
    rgb : bool
        One interleaved plane with ``size_c`` samples (``SamplesPerPixel``)
        instead of one plane per channel.
    first_ifd : int
        Index of the first top-level IFD holding this image.
    channel_names : sequence of str, optional
        One name per channel (one name in total for an RGB image).
    physical_size : tuple of float, optional
        Pixel size ``(y, x)`` in micrometres.
    """

    name: str
    size_y: int
    size_x: int
    size_c: int
    dtype: np.dtype
    rgb: bool
    first_ifd: int
    channel_names: Sequence[str] | None = None
    physical_size: tuple[float, float] | None = None

    @property
    def ifd_count(self) -> int:
        """Number of top-level IFDs (planes) this image occupies."""
        return 1 if self.rgb else self.size_c


def _sub(parent: ET.Element, tag: str, **attrib: str) -> ET.Element:
    return ET.SubElement(parent, tag, attrib)


def _format_float(value: float) -> str:
    return repr(float(value))


def _add_image(root: ET.Element, index: int, image: OmeImage, annotate: bool) -> None:
    element = _sub(root, "Image", ID=f"Image:{index}", Name=image.name)
    pixels_attrib = {
        "ID": f"Pixels:{index}",
        "DimensionOrder": "XYCZT",
        "Type": ome_pixel_type(image.dtype),
        "SizeX": str(image.size_x),
        "SizeY": str(image.size_y),
        "SizeC": str(image.size_c),
        "SizeZ": "1",
        "SizeT": "1",
        "Interleaved": "true" if image.rgb else "false",
        "BigEndian": "false",
    }
    if image.physical_size is not None:
        # The unit defaults to micrometres.
        pixels_attrib["PhysicalSizeY"] = _format_float(image.physical_size[0])
        pixels_attrib["PhysicalSizeX"] = _format_float(image.physical_size[1])
    pixels = _sub(element, "Pixels", **pixels_attrib)
    names = list(image.channel_names or [])
    if image.rgb:
        attrib = {"ID": f"Channel:{index}:0", "SamplesPerPixel": str(image.size_c)}
        if names:
            attrib["Name"] = names[0]
        _sub(pixels, "Channel", **attrib)
        _sub(pixels, "TiffData", IFD=str(image.first_ifd), PlaneCount="1")
    else:
        for c in range(image.size_c):
            attrib = {"ID": f"Channel:{index}:{c}", "SamplesPerPixel": "1"}
            if c < len(names):
                attrib["Name"] = names[c]
            _sub(pixels, "Channel", **attrib)
        for c in range(image.size_c):
            _sub(
                pixels,
                "TiffData",
                FirstC=str(c),
                FirstZ="0",
                FirstT="0",
                IFD=str(image.first_ifd + c),
                PlaneCount="1",
            )
    if annotate:
        _sub(element, "AnnotationRef", ID="Annotation:0")


def build_ome_xml(
    images: Sequence[OmeImage],
    *,
    annotations: Mapping[str, str] | None = None,
    creator: str | None = None,
) -> str:
    """Return the OME-XML document describing ``images``.

    Parameters
    ----------
    images : sequence of OmeImage
        The images in file order; the first one receives the annotation.
    annotations : mapping of str to str, optional
        Key/value pairs stored as one ``MapAnnotation`` in
        ``StructuredAnnotations`` and referenced from the first Image.
    creator : str, optional
        ``OME/@Creator`` (software name and version).

    Returns
    -------
    str
        XML text with an XML declaration; encode it as UTF-8.
    """
    if not images:
        raise ValueError("images must not be empty")
    # Namespace declarations written as plain attributes keep ElementTree's
    # global prefix registry untouched and the default namespace unprefixed.
    root = ET.Element(
        "OME",
        {
            "xmlns": OME_NAMESPACE,
            "xmlns:xsi": _XSI,
            "xsi:schemaLocation": f"{OME_NAMESPACE} {OME_NAMESPACE}/ome.xsd",
            "UUID": f"urn:uuid:{uuid.uuid4()}",
        },
    )
    if creator:
        root.set("Creator", creator)
    annotate = bool(annotations)
    for index, image in enumerate(images):
        _add_image(root, index, image, annotate and index == 0)
    if annotate:
        assert annotations is not None
        structured = _sub(root, "StructuredAnnotations")
        annotation = _sub(
            structured,
            "MapAnnotation",
            ID="Annotation:0",
            Namespace=_ANNOTATION_NAMESPACE,
        )
        value = _sub(annotation, "Value")
        for key, text in annotations.items():
            _sub(value, "M", K=str(key)).text = str(text)
    body = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body
