"""The DICOM upper layer and its encodings: PDUs, the association loop, ACSE and negotiation, SOP class and transfer-syntax tables, DICOM TLS; imports no other layer but `storescpd.messages`."""
