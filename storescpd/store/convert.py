"""Re-encoding a received data set the way DCMTK storescp writes it when told to.

The receive path streams every data set raw into a staging file (flat memory). Only when an
output option asks for a different encoding (+te/+tb/+ti/+td, -e, +g/-g, -u, +uc, +p, +cl with
deflate) is the staged file decoded with pydicom and written again into a second staging file.
That path holds the object in memory; it is the price of the option, as in DCMTK's normal mode.

Each rule below was measured against DCMTK 3.6.7 storescp (tests/integration/test_differential.py
keeps it so):
- sequences and items: explicit lengths by default, undefined lengths with -e (encapsulated
  pixel data keeps its undefined length either way);
- group lengths: recalculated where present (+g=), added to every group of every item (+g),
  removed everywhere (-g);
- -u: the post-1993 VRs become OB (text and UN) or OW (binary);
- +uc: a defined-length UN element whose tag the dictionary knows gets its real VR;
- data set trailing padding (FFFC,FFFC) that was received is dropped; +p f i adds new padding
  so that the file is a multiple of f bytes and each item a multiple of i bytes.
"""

from __future__ import annotations

import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from storescpd.dicom.transfer_syntaxes import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE

UNCOMPRESSED = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})

OUTPUT_TRANSFER_SYNTAXES = {"little": EXPLICIT_LE, "big": EXPLICIT_BE, "implicit": IMPLICIT_LE,
                            "deflated": DEFLATED_LE}
DEFAULT_COMPRESSION_LEVEL = 6
TRAILING_PADDING = 0xFFFCFFFC

# -u (--disable-new-vr): what DCMTK writes instead of each VR newer than 1993.
OLD_VR = {"UN": "OB", "UT": "OB", "UC": "OB", "UR": "OB",
          "OF": "OW", "OD": "OW", "OL": "OW", "OV": "OW", "SV": "OW", "UV": "OW"}


# Binary VRs whose values pydicom keeps as bytes: their word size for byte order changes.
SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


@dataclass(frozen=True)
class Encoding:
    """How a data set is written: the output options of one configuration."""

    transfer_syntax: str
    length: str = "explicit"
    group_length: str = "recalc"
    new_vr: bool = True
    convert_un: bool = False
    padding: tuple[int, int] | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL


def output_transfer_syntax(config: Any, received: str) -> str:
    """The transfer syntax a received object is written in (+t= keeps the network's)."""
    return OUTPUT_TRANSFER_SYNTAXES.get(config.write_transfer_syntax, received)


# The output encoding options (+t= +te .. +u -u +g= +g -g +e -e -p +p +uc -uc +cl): naming any of
# them, even at its default (``+e``), asks for DCMTK's re-encoding.
ENCODING_SETTINGS = frozenset({"write_transfer_syntax", "new_vr", "group_length", "length_encoding", "padding",
                               "convert_un", "compression_level"})


def encoding_for(config: Any, received: str) -> Encoding | None:
    """The re-encoding a configuration asks for, or None: publish the raw stream as received.

    DCMTK's normal mode always re-encodes (undefined lengths become explicit, wrong group
    lengths are corrected). storescpd does so when an output encoding option is named on the
    command line, or set to other than its default anywhere; with none of them it keeps
    the raw stream so that large objects never sit in memory. docs/options.md says so.
    """
    if config.bit_preserving:
        return None
    target = output_transfer_syntax(config, received)
    padding = tuple(config.padding) if config.padding else None
    wanted = Encoding(
        transfer_syntax=target,
        length=config.length_encoding,
        group_length=config.group_length,
        new_vr=config.new_vr,
        convert_un=config.convert_un,
        padding=padding,  # type: ignore[arg-type]
        compression_level=config.compression_level,
    )
    deflate_level_matters = target == DEFLATED_LE and config.compression_level != DEFAULT_COMPRESSION_LEVEL
    named = ENCODING_SETTINGS & getattr(config, "explicit", frozenset())
    if (named or target != received or wanted.length != "explicit" or wanted.group_length != "recalc"
            or not wanted.new_vr or wanted.convert_un or padding or deflate_level_matters):
        return wanted
    return None


def convert(source: Path, offset: int, received: str, dest: BinaryIO, encoding: Encoding, head: bytes) -> None:
    """Read the data set at ``offset`` of ``source`` (in ``received``) and write it to ``dest``.

    ``head`` (preamble and file meta naming the output transfer syntax, or b"" for -F) comes first.
    """
    ds = read_staged(source, offset, received, encoding.convert_un)
    body = encode(ds, encoding)
    if encoding.padding and head:
        body = _pad_file(body, len(head), encoding)
    if encoding.transfer_syntax == DEFLATED_LE:
        compressor = zlib.compressobj(encoding.compression_level, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = compressor.compress(body) + compressor.flush()
    dest.write(head)
    dest.write(body)


@contextmanager
def _un_replacement(enabled: bool) -> Iterator[None]:
    # pydicom replaces UN by the dictionary VR on read by default; DCMTK only does with +uc.
    saved = pydicom_config.replace_un_with_known_vr
    pydicom_config.replace_un_with_known_vr = enabled
    try:
        yield
    finally:
        pydicom_config.replace_un_with_known_vr = saved


MAX_INFLATED = 1 << 30  # a deflated data set to re-encode is inflated in memory; no more than this


def read_staged(source: Path, offset: int, received: str, convert_un: bool = False) -> Dataset:
    """The data set of a staged file, every value read (the file is about to be replaced)."""
    ts = UID(received)
    implicit = ts == IMPLICIT_LE
    little = ts != EXPLICIT_BE
    with open(source, "rb") as fh:
        fh.seek(offset)
        stream: BinaryIO = fh
        if ts == DEFLATED_LE:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            inflated = inflater.decompress(fh.read(), MAX_INFLATED + 1)
            if len(inflated) > MAX_INFLATED:  # re-encoding holds the data set in memory
                raise ValueError(f"the deflated data set inflates to more than {MAX_INFLATED >> 20} MiB")
            stream = BytesIO(inflated)
        with _un_replacement(convert_un):
            ds = read_dataset(stream, implicit, little)
            _resolve(ds)
    ds.set_original_encoding(implicit, little, ds._character_set)
    return ds


def _resolve(ds: Dataset) -> None:
    """Turn every raw element into a DataElement while the UN setting is in force."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _resolve(item)


def encode(ds: Dataset, encoding: Encoding) -> bytes:
    """The data set encoded as DCMTK would write it with these options (not deflated yet)."""
    ts = UID(encoding.transfer_syntax)
    implicit = ts == IMPLICIT_LE
    little = ts != EXPLICIT_BE
    swap = little != ds.original_encoding[1]
    _prepare(ds, encoding, implicit, little, swap)
    return _encoded(ds, implicit, little)


def _encoded(ds: Dataset, implicit: bool, little: bool, parent_charset: Any = "iso8859") -> bytes:
    """``ds`` in tag order; unlike pydicom's writer, group length elements are kept."""
    if (implicit, little) != tuple(ds.original_encoding) or ds.original_character_set != ds._character_set:
        ds = correct_ambiguous_vr(ds, little)
    charset = ds.get("SpecificCharacterSet", parent_charset)
    return b"".join(_element_bytes(ds[tag], implicit, little, charset) for tag in sorted(ds.keys()))


def _element_bytes(elem: DataElement, implicit: bool, little: bool, charset: Any) -> bytes:
    if elem.VR != "SQ":
        fp = DicomBytesIO()
        fp.is_implicit_VR = implicit
        fp.is_little_endian = little
        write_data_element(fp, elem, charset)
        return fp.getvalue()
    endian = "<" if little else ">"
    items = b"".join(_item_bytes(item, implicit, little, charset) for item in elem.value)
    undefined = elem.is_undefined_length
    length = 0xFFFFFFFF if undefined else len(items)
    if implicit:
        head = struct.pack(f"{endian}HHL", elem.tag.group, elem.tag.element, length)
    else:
        head = struct.pack(f"{endian}HH2sHL", elem.tag.group, elem.tag.element, b"SQ", 0, length)
    tail = struct.pack(f"{endian}HHL", 0xFFFE, 0xE0DD, 0) if undefined else b""
    return head + items + tail


def _item_bytes(item: Dataset, implicit: bool, little: bool, charset: Any) -> bytes:
    endian = "<" if little else ">"
    body = _encoded(item, implicit, little, charset)
    undefined = item.is_undefined_length_sequence_item
    head = struct.pack(f"{endian}HHL", 0xFFFE, 0xE000, 0xFFFFFFFF if undefined else len(body))
    tail = struct.pack(f"{endian}HHL", 0xFFFE, 0xE00D, 0) if undefined else b""
    return head + body + tail


def _prepare(ds: Dataset, encoding: Encoding, implicit: bool, little: bool, swap: bool) -> None:
    """Apply the options to ``ds`` and every item below it, innermost first.

    ``swap``: the byte order changes, so binary values pydicom keeps as bytes (OW, OL, ...) are
    swapped word by word, as DCMTK does.
    """
    undefined = encoding.length == "undefined"
    if TRAILING_PADDING in ds:  # DCMTK drops received padding (-p) or computes it anew (+p)
        del ds[TRAILING_PADDING]
    for elem in list(ds):
        if swap and elem.VR in SWAP_WIDTH and isinstance(elem.value, bytes) and not _encapsulated(elem):
            elem.value = _swapped(elem.value, SWAP_WIDTH[elem.VR])
        if not encoding.new_vr and elem.VR in OLD_VR:
            _retype(ds, elem, OLD_VR[elem.VR], little)
        if elem.VR == "SQ":
            elem.is_undefined_length = undefined
            for item in elem.value:
                item.is_undefined_length_sequence_item = undefined
                _prepare(item, encoding, implicit, little, swap)
                if encoding.padding and encoding.padding[1] > 1:
                    _pad_item(item, encoding.padding[1], implicit, little)
    _group_lengths(ds, encoding.group_length, implicit, little)


def _retype(ds: Dataset, elem: DataElement, vr: str, little: bool) -> None:
    """Give ``elem`` another VR, keeping its encoded value bytes (padding included)."""
    if isinstance(elem.value, bytes):
        value = elem.value
    else:  # the value as it is encoded under its own VR: an implicit VR element without its header
        value = _element_bytes(elem, True, little, ds.get("SpecificCharacterSet", "iso8859"))[8:]
    ds[elem.tag] = DataElement(elem.tag, vr, value)


def _swapped(value: bytes, width: int) -> bytes:
    if len(value) % width:
        return value
    fmt = {2: "H", 4: "L", 8: "Q"}[width]
    count = len(value) // width
    return struct.pack(f">{count}{fmt}", *struct.unpack(f"<{count}{fmt}", value))


def _encapsulated(elem: DataElement) -> bool:
    return bool(getattr(elem, "is_undefined_length", False))


def _group_lengths(ds: Dataset, mode: str, implicit: bool, little: bool) -> None:
    groups: dict[int, list[DataElement]] = {}
    present = set()
    for elem in ds:
        group = elem.tag.group
        if group == 0x0002 or group == 0xFFFE or (group == 0xFFFC and elem.tag == TRAILING_PADDING):
            continue
        if elem.tag.element == 0:
            present.add(group)
            continue
        groups.setdefault(group, []).append(elem)
    for group in present:
        del ds[Tag(group, 0)]
    if mode == "remove":
        return
    wanted = set(groups) if mode == "create" else present & set(groups)
    charset = ds.get("SpecificCharacterSet", "iso8859")
    for group in sorted(wanted):
        length = sum(len(_element_bytes(e, implicit, little, charset)) for e in groups[group])
        ds.add_new(Tag(group, 0), "UL", length)


def _pad_item(item: Dataset, multiple: int, implicit: bool, little: bool) -> None:
    size = len(_encoded(item, implicit, little))
    _add_padding(item, size, multiple, implicit)


def _pad_file(body: bytes, head: int, encoding: Encoding) -> bytes:
    """+p f: a trailing padding element makes the whole file a multiple of f bytes."""
    multiple = encoding.padding[0] if encoding.padding else 0
    if multiple <= 1:
        return body
    ts = UID(encoding.transfer_syntax)
    implicit = ts == IMPLICIT_LE
    little = ts != EXPLICIT_BE
    ds = Dataset()
    _add_padding(ds, head + len(body), multiple, implicit)
    return body + _encoded(ds, implicit, little) if TRAILING_PADDING in ds else body


def _add_padding(ds: Dataset, size: int, multiple: int, implicit: bool) -> None:
    header = 8 if implicit else 12
    remainder = size % multiple
    if remainder == 0:
        return
    pad = multiple - remainder
    while pad < header:
        pad += multiple
    ds.add_new(TRAILING_PADDING, "OB", b"\0" * (pad - header))


def dataset_elements(ds: Dataset) -> list[tuple[str, str, Any]]:
    """(tag, VR, value) of every element, recursively: the element-by-element comparison key."""
    out: list[tuple[str, str, Any]] = []
    for elem in ds:
        if elem.tag.element == 0 or elem.tag == TRAILING_PADDING:
            continue
        if elem.VR == "SQ":
            out.append((str(elem.tag), "SQ", len(elem.value)))
            for index, item in enumerate(elem.value):
                out.extend((f"{elem.tag}[{index}]{t}", vr, v) for t, vr, v in dataset_elements(item))
        else:
            out.append((str(elem.tag), elem.VR, elem.value))
    return out


__all__ = ["Encoding", "encoding_for", "convert", "output_transfer_syntax", "read_staged", "encode",
           "dataset_elements", "Sequence"]
