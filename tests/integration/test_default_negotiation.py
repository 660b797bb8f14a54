"""Without -xf, storescpd accepts the storage SOP classes DCMTK 3.6.7's storescp accepts (plus NOT_IN_DCMTK_367)."""

from __future__ import annotations

from tests.support.peers import accepted_contexts, require_dcmtk

PRIVATE_CLASS = "1.2.826.0.1.3680043.10.5.99"


def setup_module() -> None:
    require_dcmtk()


def _proposed() -> list[str]:
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from storescpd.dicom.sop_classes import STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS

    uids = {VERIFICATION_SOP_CLASS, PRIVATE_CLASS, *(uid for uid, _, _ in STORAGE_SOP_CLASSES),
            *map(str, _STORAGE_CLASSES.values())}
    return sorted(uids)


def test_default_accepts_the_storage_classes_dcmtk_accepts(daemon_factory, dcmtk_storescp) -> None:
    from storescpd.dicom.sop_classes import NOT_IN_DCMTK_367

    proposed = _proposed()
    ours = accepted_contexts(daemon_factory().port, proposed)
    theirs = accepted_contexts(dcmtk_storescp().port, proposed)
    our_classes = {uid for uid, _ in ours}
    their_classes = {uid for uid, _ in theirs}
    assert len(their_classes) > 100
    assert not their_classes & NOT_IN_DCMTK_367, "DCMTK 3.6.7 was not expected to know these"
    assert our_classes - their_classes == NOT_IN_DCMTK_367
    assert their_classes - our_classes == set()
    # Same transfer syntax chosen for every class both accept.
    assert {p for p in ours if p[0] not in NOT_IN_DCMTK_367} == theirs
