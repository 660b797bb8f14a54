"""Write storescpd/dicom/sop_classes.py from parse_manpage.py + the JSON produced by verify_sop_classes.py.

Usage: gen_sop_classes.py RESULT.json > storescpd/dicom/sop_classes.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parse_manpage import manual, parse  # noqa: E402

# Prefixes of the classes DCMTK 3.6.7 does not know, taken from the modality table in
# dcmdata/libsrc/dcuid.cc of newer DCMTK (3.6.8+); 3.6.7 itself refuses them and, with -pm, writes "UNKNOWN".
NEWER_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.6.3": "PA",
    "1.2.840.10008.5.1.4.1.1.9.1.4": "ECGh",
    "1.2.840.10008.5.1.4.1.1.11.12": "PSv",
    "1.2.840.10008.5.1.4.1.1.481.23": "RIe",
    "1.2.840.10008.5.1.4.1.1.481.24": "RIc",
    "1.2.840.10008.5.1.4.1.1.481.25": "RPp",
}

HEADER = '''"""Storage SOP classes of DCMTK storescp, with DCMTK's file-name prefixes.

The UID/name list is parsed from the "DICOM Conformance" section of storescp's manual
(docs/dcmtk-reference/parse_manpage.py).  Every prefix was verified against DCMTK 3.6.7: one
minimal object per SOP class was sent with /usr/bin/storescu (-R +C) to `/usr/bin/storescp -od DIR`
and the prefix read back from the written file name `<prefix>.<SOPInstanceUID>`
(docs/dcmtk-reference/verify_sop_classes.py, gen_sop_classes.py).

The classes in NOT_IN_DCMTK_367 are listed by the (3.6.8) manual but unknown to 3.6.7: its storescp
rejects them (and storescu skips them); with -pm it stores them as "UNKNOWN.<uid>".  For those the
prefix comes from the modality table of newer DCMTK (dcmdata/libsrc/dcuid.cc).  Any other class
(e.g. a private one accepted with -pm, verified) gets UNKNOWN_PREFIX.
"""
from __future__ import annotations

VERIFICATION_SOP_CLASS = "{verification}"

UNKNOWN_PREFIX = "UNKNOWN"

STORAGE_SOP_CLASSES: tuple[tuple[str, str, str], ...] = (
'''

FOOTER = '''
_PREFIX_BY_UID: dict[str, str] = {{uid: prefix for uid, _, prefix in STORAGE_SOP_CLASSES}}

STORAGE_SOP_CLASS_UIDS: frozenset[str] = frozenset(_PREFIX_BY_UID)

NOT_IN_DCMTK_367: frozenset[str] = frozenset({{
{newer}
}})


def file_prefix(sop_class_uid: str) -> str:
    """The prefix DCMTK storescp puts before ".<SOPInstanceUID>" in file names."""
    return _PREFIX_BY_UID.get(sop_class_uid.rstrip("\\x00 "), UNKNOWN_PREFIX)
'''


def main(result_path: str) -> None:
    man = parse(manual())
    result = json.load(open(result_path))
    verified = {c["uid"]: c for c in result["classes"]}
    assert result["private_class_file_with_pm"].startswith("UNKNOWN."), result["private_class_file_with_pm"]
    verification = next(u for n, u in man["sop_classes"] if n == "VerificationSOPClass")
    out = [HEADER.format(verification=verification)]
    for name, uid in man["sop_classes"]:
        if uid == verification:
            continue
        c = verified[uid]
        if c["accepted"]:
            prefix = c["prefix"]
        else:
            assert c["prefix"] == "UNKNOWN", c
            prefix = NEWER_PREFIXES[uid]
        out.append(f'    ("{uid}", "{name}", "{prefix}"),\n')
    out.append(")\n")  # transfer syntaxes: storescpd/dicom/transfer_syntaxes.py, the one table of them
    newer = "\n".join(f'    "{u}",' for u in result["refused_without_pm"])
    out.append(FOOTER.format(newer=newer))
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
