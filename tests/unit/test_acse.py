"""Our A-ASSOCIATE parsing/encoding against pynetdicom's PDU classes and negotiation."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from storescpd.dicom import acceptance, acse
from storescpd.dicom.negotiation import contexts

CT, MR, PRIVATE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6"
IMPLICIT, EXPLICIT, BIG, J2K = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.91"
PROPOSED = [(1, CT, [IMPLICIT, EXPLICIT]), (3, MR, [J2K]), (5, PRIVATE, [EXPLICIT]), (7, CT, [BIG, IMPLICIT]),
            (9, "1.2.840.10008.1.1", [IMPLICIT])]


def encoded_request() -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "STORESCP"
    primitive.presentation_context_definition_list = []
    for cid, abstract, syntaxes in PROPOSED:
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax = cid, abstract, syntaxes
        primitive.presentation_context_definition_list.append(cx)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 32768
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"
    name = ImplementationVersionNameNotification()
    name.implementation_version_name = "OFFIS_DCMTK_367"
    primitive.user_information = [max_length, impl, name]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def test_parse_request_reads_what_pynetdicom_wrote() -> None:
    request = acse.parse_request(encoded_request()[6:])
    assert (request.calling_ae_title, request.called_ae_title) == ("MODALITY", "STORESCP")
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in request.contexts] == PROPOSED
    assert request.maximum_length_received == 32768
    assert request.implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert request.implementation_version_name == "OFFIS_DCMTK_367"
    assert not request.has_role_selection and not request.has_extended_negotiation


@pytest.mark.parametrize("preference", ["uncompressed", "big", "implicit", "all"])
def test_negotiation_equals_pynetdicoms(preference: str) -> None:
    table = dict(contexts(preference))
    request = acse.parse_request(encoded_request()[6:])
    ours = [(r.context_id, r.result, r.transfer_syntax if r.result == 0 else None)
            for r in acceptance.negotiate(request, table)]
    rq = A_ASSOCIATE_RQ()
    rq.decode(encoded_request())
    supported = []
    for uid, syntaxes in table.items():
        cx = PresentationContext()
        cx.abstract_syntax, cx.transfer_syntax = uid, syntaxes
        supported.append(cx)
    theirs, _roles = negotiate_as_acceptor(rq.to_primitive().presentation_context_definition_list, supported)
    assert ours == [(cx.context_id, cx.result, cx.transfer_syntax[0] if cx.result == 0 else None) for cx in theirs]


def test_accept_decodes_with_pynetdicom() -> None:
    request = acse.parse_request(encoded_request()[6:])
    results = acceptance.negotiate(request, dict(contexts("uncompressed")))
    data = acse.encode_accept(request, results, 16384, "2.25.1", "STORESCPD_010")
    ac = A_ASSOCIATE_AC()
    ac.decode(data)
    primitive = ac.to_primitive()
    assert primitive.result == 0 and primitive.maximum_length_received == 16384
    assert primitive.implementation_class_uid == "2.25.1"
    got = {cx.context_id: (cx.result, cx.transfer_syntax[0]) for cx in primitive.presentation_context_definition_results_list}
    assert got[1] == (0, EXPLICIT) and got[5][0] == 3 and got[3][0] == 4 and got[7] == (0, BIG)


def test_reject_bytes() -> None:
    assert acse.encode_reject(1, 1, 1) == bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 1])


@pytest.mark.parametrize("body", [
    b"\x00" * 10,
    b"\x00" * 68 + struct.pack(">BxH", 0x20, 200) + b"\x01",          # item longer than the PDU
    b"\x00" * 68 + struct.pack(">BxH", 0x20, 2) + b"\x01\x00",        # context item without its fields
])
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(acse.MalformedRequest):
        acse.parse_request(body)


def test_an_internal_error_aborts_only_that_association(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A bug in a handler must end the association with an A-ABORT and a summary, not escape."""
    import socket as socketlib

    from storescpd.config import settings as cfg
    from storescpd.dicom import engine
    from storescpd.store.handlers import StoreContext
    from storescpd.store.storage import prepare_staging_dir

    config = cfg.Config({**cfg.defaults(), "output_directory": str(tmp_path)})
    ctx = StoreContext(config=config, output_dir=tmp_path, staging_dir=prepare_staging_dir(tmp_path))
    ours, theirs = socketlib.socketpair()
    theirs.sendall(encoded_request())

    def broken(self: engine.Association) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(engine.Association, "serve", broken)
    summary = engine.serve(ours, config, ctx, lambda kind, data: None, lambda request: None, None)
    assert summary["outcome"] == "aborted"
    theirs.settimeout(5)
    data = theirs.recv(65536)
    ac_length = struct.unpack(">L", data[2:6])[0]
    rest = data[6 + ac_length:] or theirs.recv(64)
    assert data[0] == 0x02 and rest[0] == 0x07  # A-ASSOCIATE-AC, then A-ABORT
    ours.close()
    theirs.close()


@pytest.mark.parametrize("data_set_type,announces", [(0x0000, True), (0x0001, True), (0x0102, True),
                                                     (0x0101, False)])
def test_command_data_set_type(data_set_type: int, announces: bool) -> None:
    from storescpd.dicom.engine import NO_DATA_SET, decode_command

    def element(number: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, number, len(value)) + value

    command = decode_command(element(0x0100, struct.pack("<H", 1)) + element(0x0800, struct.pack("<H", data_set_type)))
    assert (command.data_set_type != NO_DATA_SET) is announces


def _config(**values: object) -> object:
    from storescpd.config import settings as cfg

    return cfg.Config({**cfg.defaults(), **values})


NEGOTIATIONS = {  # every way a request can be negotiated (acceptance.py), and what each adds to the request
    "table": ({}, b""),
    "role selection": ({}, None),
    "-pm": ({"promiscuous": True}, b""),
    "-xf": ({"config_file": [str(Path(__file__).resolve().parents[2] / "etc" / "storescp.cfg"), "Default"]}, b""),
}


@pytest.mark.parametrize("negotiation", list(NEGOTIATIONS))
def test_every_invalid_request_is_answered_alike_by_every_negotiation(negotiation: str) -> None:
    from storescpd.config import ps38_cases as ps38
    from storescpd.dicom.dimse import ProtocolError

    values, extra = NEGOTIATIONS[negotiation]
    config = _config(**values)
    for case in ps38.CASES:
        try:
            answer = acceptance.answer(case.build(ps38.ROLE_SELECTION if extra is None else extra)[6:], config,
                                       lambda request: None)
            got = ps38.describe(answer.pdu[0], answer.pdu[6:])
        except ProtocolError as exc:
            got = ps38.describe(0x07, bytes([0, 0, 2, exc.reason]))
        assert got == ps38.our_answer(case), case.name


def test_refused_context_ids_are_named_and_the_rest_negotiated() -> None:
    from storescpd.config.ps38_cases import context, request

    body = request(context(2) + context(1) + context(3, b"1.2.3.999") + context(3) + context(5))[6:]
    answer = acceptance.answer(body, _config(), lambda request: None)
    assert set(answer.contexts) == {1, 5}
    assert answer.notes == [
        "refusing presentation context 2: its ID is even (PS3.8 9.3.2.2: odd, 1 to 255, one per context)",
        "refusing presentation context 3: its ID is proposed 2 times (PS3.8 9.3.2.2: odd, 1 to 255, one per context)"]
    # (pynetdicom cannot decode an AC that names an even ID: read the result items by hand)
    results, offset, body = [], 68, answer.pdu[6:]
    while offset < len(body):
        item_type, length = struct.unpack_from(">BxH", body, offset)
        if item_type == 0x21:
            results.append((body[offset + 4], body[offset + 6]))
        offset += 4 + length
    assert results == [(2, 2), (1, 0), (3, 2), (5, 0)]  # in the order proposed


def test_role_selection_and_extended_negotiation_answers_decode_with_pynetdicom(tmp_path: Path) -> None:
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation, SOPClassExtendedNegotiation

    from storescpd.config.ps38_cases import context, item, request, with_uid_length

    profile = tmp_path / "roles.cfg"
    profile.write_text("[[TransferSyntaxes]]\n[Any]\nTransferSyntax1 = LittleEndianExplicit\n"
                       "[[PresentationContexts]]\n[Contexts]\nPresentationContext1 = CTImageStorage\\Any\n"
                       "[[SCPSCURoleSelection]]\n[Roles]\nRole1 = CTImageStorage\\BOTH\n"
                       "[[ExtendedNegotiation]]\n[Extended]\nExtendedNegotiation1 = CTImageStorage\\0102\n"
                       "[[Profiles]]\n[P]\nPresentationContexts = Contexts\nSCPSCURoleSelection = Roles\n"
                       "ExtendedNegotiation = Extended\n")
    ct = CT.encode()
    body = request(context(1), extra_user=item(0x54, with_uid_length(ct, b"\1\1")) + item(0x56, with_uid_length(ct, b"\1")))
    answer = acceptance.answer(body[6:], _config(config_file=[str(profile), "P"]), lambda request: None)
    ac = A_ASSOCIATE_AC()
    ac.decode(answer.pdu)
    primitive = ac.to_primitive()
    roles = [(str(i.sop_class_uid), i.scu_role, i.scp_role) for i in primitive.user_information
             if isinstance(i, SCP_SCU_RoleSelectionNegotiation)]
    extended = [(str(i.sop_class_uid), i.service_class_application_information) for i in primitive.user_information
                if isinstance(i, SOPClassExtendedNegotiation)]
    assert (roles, extended) == ([(CT, True, True)], [(CT, b"\1\2")])
    assert [(cx.context_id, cx.result) for cx in primitive.presentation_context_definition_results_list] == [(1, 0)]
