"""storescpd: a DICOM Storage SCP daemon, a drop-in for DCMTK's storescp."""

__version__ = "0.1.0"

# Our implementation identity, written into the file meta of every stored file and sent
# in A-ASSOCIATE-AC. A UUID-derived UID (PS3.5 B.2) needs no registered root.
IMPLEMENTATION_CLASS_UID = "2.25.303151426213663629616862494524503900046"
IMPLEMENTATION_VERSION_NAME = "STORESCPD_010"
# Root for UIDs we generate (unique file names): another UUID-derived UID.
UID_ROOT = "2.25.58787527686610162955733815920141021928."

# The layers, top to bottom: subpackages, and at the bottom one module (the vocabulary of events
# and questions). A module may import its own layer and the layers below it, never one above
# (tests/unit/test_layers.py walks every import, function-local ones included, and also fails on
# any import cycle between modules).
LAYERS = ("cli", "control", "daemon", "store", "config", "dicom", "messages")
