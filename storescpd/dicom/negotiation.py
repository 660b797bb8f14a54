"""Presentation contexts: which SOP classes and transfer syntaxes we accept, in DCMTK's order.

pynetdicom 3 picks, for each proposed context, the first transfer syntax of *our* list that
the peer proposed, so the order of each list below is the acceptor's preference, as in
DCMTK's ``ASC_acceptContextsWithPreferredTransferSyntaxes``.
"""

from __future__ import annotations

from typing import Any

from storescpd.dicom.asconfig import load_profile
from storescpd.dicom.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS
from storescpd.dicom.transfer_syntaxes import (
    DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, HEVC, HEVC10, IMPLICIT_LE, J2K, J2K_LOSSLESS, JPEG_BASELINE, JPEG_EXTENDED,
    JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS, JPEG_LS_LOSSY, LOCAL_EXPLICIT, MPEG2_MPHL, MPEG2_MPHL_F, MPEG2_MPML,
    MPEG2_MPML_F, MPEG4_2D, MPEG4_2D_F, MPEG4_3D, MPEG4_3D_F, MPEG4_BD, MPEG4_BD_F, MPEG4_HP41, MPEG4_HP41_F,
    MPEG4_ST, MPEG4_ST_F, OPPOSITE_EXPLICIT, RLE,
)

UNCOMPRESSED = [LOCAL_EXPLICIT, OPPOSITE_EXPLICIT, IMPLICIT_LE]

_VIDEO = [MPEG2_MPML, MPEG2_MPML_F, MPEG2_MPHL, MPEG2_MPHL_F, MPEG4_HP41, MPEG4_HP41_F, MPEG4_BD, MPEG4_BD_F,
          MPEG4_2D, MPEG4_2D_F, MPEG4_3D, MPEG4_3D_F, MPEG4_ST, MPEG4_ST_F, HEVC, HEVC10]

ACCEPT_ALL = [J2K, J2K_LOSSLESS, JPEG_EXTENDED, JPEG_BASELINE, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSY, JPEG_LS_LOSSLESS,
              RLE, *_VIDEO, DEFLATED_LE, *UNCOMPRESSED]


def _then_uncompressed(first: str) -> list[str]:
    return [first, *UNCOMPRESSED]


# The storage transfer syntaxes for each +x? option, most preferred first, as measured against
# DCMTK 3.6.7 (docs/dcmtk-reference/negotiation.py). One deliberate superset: +xa also accepts
# the fragmentable MPEG-2/MPEG-4 syntaxes that the manual lists and 3.6.7 does not know yet.
STORAGE_PREFERENCES: dict[str, list[str]] = {
    "uncompressed": UNCOMPRESSED,
    "little": [EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE],
    "big": [EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE],
    "implicit": [IMPLICIT_LE],
    "lossless": _then_uncompressed(JPEG_LOSSLESS_SV1),
    "jpeg8": _then_uncompressed(JPEG_BASELINE),
    "jpeg12": _then_uncompressed(JPEG_EXTENDED),
    "j2k-lossless": _then_uncompressed(J2K_LOSSLESS),
    "j2k-lossy": _then_uncompressed(J2K),
    "jls-lossless": _then_uncompressed(JPEG_LS_LOSSLESS),
    "jls-lossy": _then_uncompressed(JPEG_LS_LOSSY),
    "mpeg2": _then_uncompressed(MPEG2_MPML),
    "mpeg2-high": _then_uncompressed(MPEG2_MPHL),
    "mpeg4": _then_uncompressed(MPEG4_HP41),
    "mpeg4-bd": _then_uncompressed(MPEG4_BD),
    "mpeg4-2-2d": _then_uncompressed(MPEG4_2D),
    "mpeg4-2-3d": _then_uncompressed(MPEG4_3D),
    "mpeg4-2-st": _then_uncompressed(MPEG4_ST),
    "hevc": _then_uncompressed(HEVC),
    "hevc10": _then_uncompressed(HEVC10),
    "rle": _then_uncompressed(RLE),
    "deflated": _then_uncompressed(DEFLATED_LE),
    "all": ACCEPT_ALL,
}


def storage_transfer_syntaxes(preference: str) -> list[str]:
    return list(STORAGE_PREFERENCES[preference])


def verification_transfer_syntaxes(preference: str) -> list[str]:
    """Verification is offered the uncompressed syntaxes, in the preferred order where it names one."""
    ordered = [ts for ts in STORAGE_PREFERENCES[preference] if ts in UNCOMPRESSED]
    return ordered or list(UNCOMPRESSED)


def contexts(preference: str) -> list[tuple[str, list[str]]]:
    """(abstract syntax, transfer syntaxes) for every context we accept."""
    storage = storage_transfer_syntaxes(preference)
    return [(VERIFICATION_SOP_CLASS, verification_transfer_syntaxes(preference))] + [
        (uid, storage) for uid, _name, _prefix in STORAGE_SOP_CLASSES
    ]


def acceptor_contexts(config: Any) -> list[tuple[str, list[str], bool | None, bool | None]]:
    """(abstract syntax, transfer syntaxes, SCU role, SCP role) for every context we accept.

    ``-xf FILE PROFILE`` replaces the +x? lists by the profile's contexts and SCP/SCU role
    selection (a role of None: no role selection for that SOP class, the default roles).
    """
    if config.config_file:
        profile = load_profile(*config.config_file)
        return [(uid, list(syntaxes), *profile.roles.get(uid, (None, None))) for uid, syntaxes in profile.contexts]
    return [(uid, syntaxes, None, None) for uid, syntaxes in contexts(config.transfer_syntaxes)]


def extended_negotiation(config: Any) -> dict[str, bytes]:
    """SOP class extended negotiation answers of the ``-xf`` profile (none without one)."""
    return load_profile(*config.config_file).extended if config.config_file else {}

