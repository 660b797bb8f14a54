"""Fuzzing the re-encoding input (store.convert, reached when an output option asks for another
encoding) through the store handler that calls it: a data set received into a staging file, then
handle_store with +te/+tb/+ti/+td, -e, +g/-g, -u, +uc, +p.

Properties of every input: handle_store answers a status and never raises; no traceback is logged;
an object answered 0x0000 is published whole (pydicom reads every element of it; the header walk
finds its data set complete); nothing is written outside the output directory and nothing is left
in its staging folder; time and memory per object are bounded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_file_meta_info

from storescpd.config import settings as cfg
from storescpd.store.handlers import StoreContext, handle_store
from storescpd.store.storage import inspect_dataset, prepare_staging_dir
from tests.support.fuzzing import (
    DEFLATED_LE,
    STAGING_DIR_NAME,
    Tracebacks,
    bounded,
    dataset_seeds,
    examples,
    mutated,
    published_files,
)

UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED_LE)
STATUSES = {0x0000, 0xA700, 0xA900, 0xC000}
OPTIONS = [
    {"write_transfer_syntax": "big"}, {"write_transfer_syntax": "implicit"}, {"write_transfer_syntax": "little"},
    {"write_transfer_syntax": "deflated"}, {"length_encoding": "undefined"}, {"group_length": "create"},
    {"group_length": "remove"}, {"new_vr": False}, {"convert_un": True}, {"padding": [16, 8]},
    {"write_transfer_syntax": "implicit", "length_encoding": "undefined", "group_length": "create"},
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reencode")


@settings(max_examples=examples(200))
@given(seed=st.sampled_from([s for s in dataset_seeds() if s.transfer_syntax in UNCOMPRESSED]),
       data=st.data(), options=st.sampled_from(OPTIONS))
def test_reencoding_any_received_data_set(root: Path, seed, data: st.DataObject, options: dict) -> None:
    body = data.draw(st.one_of(st.just(seed.data), mutated(seed.data, max_mutations=3)), label="data set")
    output = root / "out"
    shutil.rmtree(output, ignore_errors=True)
    assert [p.name for p in root.iterdir()] == [], "written beside the output directory"
    output.mkdir()
    values = {**cfg.defaults(), "output_directory": str(output), "fsync": False, **options,
              "explicit": frozenset(options)}
    ctx = StoreContext(config=cfg.Config(values), output_dir=output, staging_dir=prepare_staging_dir(output),
                       calling_ae="FUZZ")
    command = SimpleNamespace(AffectedSOPClassUID=seed.sop_class_uid, AffectedSOPInstanceUID=seed.sop_instance_uid,
                              message_id=1)
    event = SimpleNamespace(request=command, context=SimpleNamespace(transfer_syntax=seed.transfer_syntax))
    with Tracebacks() as tracebacks, bounded(10.0, 64 << 20):
        staged = ctx.begin_dataset(command, seed.transfer_syntax)
        assert staged is not None
        for i in range(0, len(body), 4096):
            ctx.fragment(memoryview(body[i:i + 4096]))
        status = handle_store(event, ctx)
    assert not tracebacks.found, tracebacks.found
    assert status in STATUSES
    assert list((output / STAGING_DIR_NAME).iterdir()) == []
    published = published_files(output)
    assert [p.name for p in root.iterdir()] == ["out"]
    if status != 0x0000:
        assert published == []
        return
    path, = published
    # What a peer sent is kept, even an element pydicom cannot read (an unknown VR): the file is whole.
    meta = read_file_meta_info(path)
    offset = 132 + 12 + meta.FileMetaInformationGroupLength
    ids = inspect_dataset(path, offset, str(meta.TransferSyntaxUID))
    assert (ids.sop_class_uid, ids.sop_instance_uid) == (seed.sop_class_uid, seed.sop_instance_uid)
