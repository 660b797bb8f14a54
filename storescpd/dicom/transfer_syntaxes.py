"""Every transfer syntax storescpd knows, in one table: its UID, DCMTK's name for it and how it encodes.

Each module that compares or names a transfer syntax imports it from here (negotiation, ``-xf``
profiles, the data-set walk, re-encoding, the conformance statement); no other module spells a
transfer-syntax UID.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class TransferSyntax:
    """One transfer syntax and the properties readers of its data sets need (PS3.5 section 10)."""

    uid: str
    dcmtk_name: str  # DCMTK's symbolic name (dcmdata's UID name map), as -xf profile files spell it
    explicit_vr: bool = True
    little_endian: bool = True
    deflated: bool = False  # the data set after the file meta group is a raw deflate stream
    encapsulated: bool = True  # Pixel Data is encapsulated (compressed fragments)


IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_LOSSY = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPML_F = "1.2.840.10008.1.2.4.100.1"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
MPEG2_MPHL_F = "1.2.840.10008.1.2.4.101.1"
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_F = "1.2.840.10008.1.2.4.102.1"
MPEG4_BD = "1.2.840.10008.1.2.4.103"
MPEG4_BD_F = "1.2.840.10008.1.2.4.103.1"
MPEG4_2D = "1.2.840.10008.1.2.4.104"
MPEG4_2D_F = "1.2.840.10008.1.2.4.104.1"
MPEG4_3D = "1.2.840.10008.1.2.4.105"
MPEG4_3D_F = "1.2.840.10008.1.2.4.105.1"
MPEG4_ST = "1.2.840.10008.1.2.4.106"
MPEG4_ST_F = "1.2.840.10008.1.2.4.106.1"
HEVC = "1.2.840.10008.1.2.4.107"
HEVC10 = "1.2.840.10008.1.2.4.108"
RLE = "1.2.840.10008.1.2.5"

_JPEG = "1.2.840.10008.1.2.4."

TABLE: tuple[TransferSyntax, ...] = (
    TransferSyntax(IMPLICIT_LE, "LittleEndianImplicit", explicit_vr=False, encapsulated=False),
    TransferSyntax(EXPLICIT_LE, "LittleEndianExplicit", encapsulated=False),
    TransferSyntax(EXPLICIT_BE, "BigEndianExplicit", little_endian=False, encapsulated=False),
    TransferSyntax(DEFLATED_LE, "DeflatedLittleEndianExplicit", deflated=True, encapsulated=False),
    TransferSyntax(JPEG_BASELINE, "JPEGBaseline"),
    TransferSyntax(JPEG_EXTENDED, "JPEGExtended:Process2+4"),
    TransferSyntax(_JPEG + "52", "JPEGExtended:Process3+5"),
    TransferSyntax(_JPEG + "53", "JPEGSpectralSelection:Non-hierarchical:Process6+8"),
    TransferSyntax(_JPEG + "54", "JPEGSpectralSelection:Non-hierarchical:Process7+9"),
    TransferSyntax(_JPEG + "55", "JPEGFullProgression:Non-hierarchical:Process10+12"),
    TransferSyntax(_JPEG + "56", "JPEGFullProgression:Non-hierarchical:Process11+13"),
    TransferSyntax(_JPEG + "57", "JPEGLossless:Non-hierarchical:Process14"),
    TransferSyntax(_JPEG + "58", "JPEGLossless:Non-hierarchical:Process15"),
    TransferSyntax(JPEG_LOSSLESS_SV1, "JPEGLossless:Non-hierarchical-1stOrderPrediction"),
    TransferSyntax(JPEG_LS_LOSSLESS, "JPEGLSLossless"),
    TransferSyntax(JPEG_LS_LOSSY, "JPEGLSLossy"),
    TransferSyntax(J2K_LOSSLESS, "JPEG2000LosslessOnly"),
    TransferSyntax(J2K, "JPEG2000"),
    TransferSyntax(_JPEG + "92", "JPEG2000MulticomponentLosslessOnly"),
    TransferSyntax(_JPEG + "93", "JPEG2000Multicomponent"),
    # JPIP: the pixel data is a URL, not encapsulated fragments
    TransferSyntax(_JPEG + "94", "JPIPReferenced", encapsulated=False),
    TransferSyntax(_JPEG + "95", "JPIPReferencedDeflate", deflated=True, encapsulated=False),
    TransferSyntax(MPEG2_MPML, "MPEG2MainProfile@MainLevel"),
    TransferSyntax(MPEG2_MPML_F, "FragmentableMPEG2MainProfile@MainLevel"),
    TransferSyntax(MPEG2_MPHL, "MPEG2MainProfile@HighLevel"),
    TransferSyntax(MPEG2_MPHL_F, "FragmentableMPEG2MainProfile@HighLevel"),
    TransferSyntax(MPEG4_HP41, "MPEG4HighProfile/Level4.1"),
    TransferSyntax(MPEG4_HP41_F, "FragmentableMPEG4HighProfile/Level4.1"),
    TransferSyntax(MPEG4_BD, "MPEG4BDcompatibleHighProfile/Level4.1"),
    TransferSyntax(MPEG4_BD_F, "FragmentableMPEG4BDcompatibleHighProfile/Level4.1"),
    TransferSyntax(MPEG4_2D, "MPEG4HighProfile/Level4.2For2DVideo"),
    TransferSyntax(MPEG4_2D_F, "FragmentableMPEG4HighProfile/Level4.2For2DVideo"),
    TransferSyntax(MPEG4_3D, "MPEG4HighProfile/Level4.2For3DVideo"),
    TransferSyntax(MPEG4_3D_F, "FragmentableMPEG4HighProfile/Level4.2For3DVideo"),
    TransferSyntax(MPEG4_ST, "MPEG4StereoHighProfile/Level4.2"),
    TransferSyntax(MPEG4_ST_F, "FragmentableMPEG4StereoHighProfile/Level4.2"),
    TransferSyntax(HEVC, "HEVCMainProfile/Level5.1"),
    TransferSyntax(HEVC10, "HEVCMain10Profile/Level5.1"),
    TransferSyntax(RLE, "RLELossless"),
)

BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in TABLE}

# Explicit VR in this machine's byte order, and in the other (DCMTK's "LocalEndianExplicit" and
# "OppositeEndianExplicit"): DCMTK prefers the local one.
_LITTLE = sys.byteorder == "little"
LOCAL_EXPLICIT = EXPLICIT_LE if _LITTLE else EXPLICIT_BE
OPPOSITE_EXPLICIT = EXPLICIT_BE if _LITTLE else EXPLICIT_LE
