"""StudyTracker and DCMTK's study folder names, without a network (values measured on DCMTK 3.6.7)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from storescpd.config.settings import Config, defaults
from storescpd.store import study_folders, study_rename
from storescpd.store.hooks import HookRequest, HookRunner
from storescpd.store.storage import UnsafeName
from storescpd.store.study_actions import child_request, hook_request
from storescpd.store.study_folders import (
    check_folder,
    ensure_folder,
    folder_name,
    patient_folder_part,
    renamed_prefix,
    study_uid_folder_part,
)
from storescpd.store.study_rename import rename_study
from storescpd.store.study_service import StudyService
from storescpd.store.study_tracker import END_OF_STUDY, RECEPTION, StudyTracker, TrackerSettings

WALL = 1796153099.657  # 2026-12-01 local time, millisecond 657
STAMP = re.compile(r"^\d{8}_\d{6}\d{3}$")


@pytest.mark.parametrize("raw, charset, expected", [
    # measured: storescp -sp with these Patient's Name values
    ("Müller^Jörg ÄÖÜßäöüÀÉéñ×÷þÞÿ".encode("latin-1"), "ISO_IR 100", "Mueller_Joerg_AeOeUessaeoeueAEen____y"),
    ("Müller^Jörg".encode("latin-1"), None, "Mueller_Joerg"),
    (b"a/b..c\\d^e f", None, "a_b__c"),
    (b"..", None, "__"),
    (b"/", None, "_"),
    (b"x\x01y\x1bz\x7fw\x00q", None, "x_y_z_w_q"),
    (b"", None, "ANONYMOUS"),
    (None, None, "ANONYMOUS"),
    (b"   ", None, "ANONYMOUS"),
    (b" Doe^Jo  ", None, "_Doe_Jo"),
    ("Ärger^Ölaf".encode("utf-8"), "ISO_IR 192", "A_rger_A_laf"),
    (bytes(range(0x80, 0xC0)), None, "_" * 64),
    (bytes(range(0xC0, 0x100)), "ISO_IR 100",
     "AAAAAeAACEEEEIIIIDNOOOOOe_OUUUUeY_ssaaaaaeaaceeeeiiiidnoooooe_ouuuuey_y"),
    (bytes(c for c in range(0x20, 0x7F) if c != 0x5C), None,
     "________________0123456789_______ABCDEFGHIJKLMNOPQRSTUVWXYZ_____abcdefghijklmnopqrstuvwxyz____"),
    (b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B", "\\ISO 2022 IR 87", "Yamada_Tarou___B_3ED__B___BB_O___B"),
])
def test_patient_folder_part_is_dcmtk_spelling(raw: bytes | None, charset: str | None, expected: str) -> None:
    assert patient_folder_part(raw, charset) == expected


def test_patient_folder_part_warns_like_dcmtk_for_other_character_sets(caplog: pytest.LogCaptureFixture) -> None:
    patient_folder_part("Ärger".encode("utf-8"), "ISO_IR 192")
    assert "Patient name not in Latin-1 (charset: ISO_IR 192), ASCII dir name may be broken" in caplog.text


def test_long_patient_name_still_fits_a_folder_name() -> None:
    # DCMTK cannot create the folder (ENAMETOOLONG) and answers 0xC000; we shorten the name.
    name = folder_name("patientname", "", "1.2", patient_folder_part(b"A" * 300, None), WALL)
    assert len(name) <= 255
    check_folder(name)


@pytest.mark.parametrize("uid, expected", [
    ("1.2.3.4", "1.2.3.4"),
    ("1.2/3", "1.2_3"),
    ("1.2.aZ-_+b", "1.2.aZ-__b"),
    ("1.2.3\x01x:y*z", "1.2.3_x:y_z"),
    ("..", ".."),  # harmless after a prefix; refused without one (below)
])
def test_study_uid_folder_part(uid: str, expected: str) -> None:
    assert study_uid_folder_part(uid) == expected


def test_folder_names_follow_dcmtk_patterns() -> None:
    assert re.match(r"^PFX_\d{8}_\d{9}$", folder_name("concurrent", "PFX", "1.2", "", WALL))
    assert STAMP.match(folder_name("concurrent", "", "1.2", "", WALL))  # no "_" after an empty prefix
    assert folder_name("concurrent", "PFX", "1.2", "", WALL).endswith("657")
    assert folder_name("studyuid", "PFX", "1.2.3", "", WALL) == "PFX_1.2.3"
    assert folder_name("studyuid", "", "1.2.3", "", WALL) == "1.2.3"
    assert re.match(r"^Doe_John_\d{8}_\d{9}$", folder_name("patientname", "", "1.2", "Doe_John", WALL))


@pytest.mark.parametrize("uid", [".", ".."])
def test_study_uid_dot_folders_are_refused(uid: str) -> None:
    # DCMTK 3.6.7 with -su "" stores a ".." study one level above -od (measured); we refuse.
    with pytest.raises(UnsafeName):
        folder_name("studyuid", "", uid, "", WALL)
    assert folder_name("studyuid", "P", uid, "", WALL) == f"P_{uid}"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b", "x" * 256])
def test_check_folder_refuses_anything_but_one_component(name: str) -> None:
    with pytest.raises(UnsafeName):
        check_folder(name)


def test_ensure_folder_refuses_a_planted_symlink(tmp_path: Path) -> None:
    (tmp_path / "PFX_1.2").symlink_to("/")
    with pytest.raises(UnsafeName):
        ensure_folder(tmp_path, "PFX_1.2", fsync=False)
    assert ensure_folder(tmp_path, "PFX_1.3", fsync=True).is_dir()


def test_a_folder_another_worker_created_is_made_durable_once_here(tmp_path: Path, monkeypatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(study_folders, "fsync_dir", synced.append)
    (tmp_path / "PFX_other").mkdir()  # created by another worker, which may not have synced it yet
    for _ in range(3):
        ensure_folder(tmp_path, "PFX_other", fsync=True)
    ensure_folder(tmp_path, "PFX_mine", fsync=True)
    ensure_folder(tmp_path, "PFX_mine", fsync=True)
    assert synced == [tmp_path, tmp_path]  # once per folder, before its first object is acknowledged
    ensure_folder(tmp_path, "PFX_quick", fsync=False)
    assert len(synced) == 2
    (tmp_path / "PFX_mine").rmdir()  # a -xcs hook moved the study away; it is sent again
    ensure_folder(tmp_path, "PFX_mine", fsync=True)
    assert len(synced) == 3


def test_renamed_prefix_is_the_first_two_characters_of_dcmtk_file_prefix() -> None:
    assert renamed_prefix("1.2.840.10008.5.1.4.1.1.2") == "CT"
    assert renamed_prefix("1.2.840.10008.5.1.4.1.1.4.1") == "MR"  # MRe
    assert renamed_prefix("1.2.3.4.5.6.private") == "UN"  # UNKNOWN


# ---- the tracker ------------------------------------------------------------------------

def settings(**kw: object) -> TrackerSettings:
    base = dict(sort="concurrent", prefix="PFX", rename=True, timeout=0.0, on_reception=True,
                on_end_of_study=True)
    base.update(kw)
    return TrackerSettings(**base)  # type: ignore[arg-type]


OUT = ("/out", "/out")  # -od as configured, and resolved


def values(ae: str) -> dict[str, str]:
    return {"calling_ae": ae, "called_ae": "STORESCP", "peer": "localhost"}


class Feed:
    """Drive a tracker like a worker: place, store, end association; collect the actions."""

    def __init__(self, tracker: StudyTracker) -> None:
        self.tracker = tracker
        self.now = 100.0
        self.wall = WALL
        self.actions: list[dict] = []
        self.n = 0

    def store(self, sender: str, uid: str, prefix: str = "CT") -> str:
        self.now += 0.1
        self.wall += 0.1
        folder, ended = self.tracker.place(sender, uid, "", self.now, self.wall, *OUT)
        self.n += 1
        file = f"{prefix}.{self.n}"
        self.actions += self.tracker.stored(sender, uid, folder, file, prefix, values(sender), self.now, *OUT)
        self.actions += ended
        return folder

    def end(self, sender: str) -> None:
        self.actions += self.tracker.sender_done(sender, self.now)

    def hooks(self, event: str) -> list[dict]:
        return [a["values"] for a in self.actions if a["action"] == event]


def test_sequential_associations_follow_dcmtk() -> None:
    # The measured DCMTK scenario: (A1 A2) (A3 B1) (B2) (C1), each in its own association.
    feed = Feed(StudyTracker(settings()))
    a = feed.store("S1", "A"); feed.store("S1", "A"); feed.end("S1")
    assert feed.store("S2", "A", "MR") == a  # same study over a new association: same folder
    b = feed.store("S2", "B")
    assert b != a
    feed.end("S2")
    feed.store("S3", "B", "MR"); feed.end("S3")
    c = feed.store("S4", "C"); feed.end("S4")
    ends = [a for a in feed.actions if a["action"] == END_OF_STUDY]
    assert [(r["directory"], [f["file"] for f in r["files"]]) for r in ends] == [
        (f"/out/{a}", ["CT.1", "CT.2", "MR.3"]), (f"/out/{b}", ["CT.4", "MR.5"])]
    ends = feed.hooks(END_OF_STUDY)
    assert [e["path"] for e in ends] == [f"/out/{a}", f"/out/{b}"]
    # #a of an end-of-study hook: the association that sent the study's last object.
    assert [e["calling_ae"] for e in ends] == ["S2", "S3"]
    assert [r["path"] for r in feed.hooks(RECEPTION)] == [f"/out/{f}" for f in (a, a, a, b, b, c)]
    assert [s.folder for s in feed.tracker.open.values()] == [c]  # the last study stays open


def test_an_ended_study_is_one_action_after_the_reception_hook_that_ended_it() -> None:
    feed = Feed(StudyTracker(settings()))
    feed.store("S1", "A"); feed.end("S1"); feed.store("S2", "B")
    assert [a["action"] for a in feed.actions] == [RECEPTION, RECEPTION, END_OF_STUDY]  # DCMTK's order
    assert [f["file"] for f in feed.actions[-1]["files"]] == ["CT.1"]  # renamed, then -xcs: one child


def test_without_rename_the_end_of_study_renames_nothing_and_without_either_it_is_silent() -> None:
    feed = Feed(StudyTracker(settings(rename=False)))
    feed.store("S1", "A"); feed.store("S1", "B")
    assert [(a["action"], a.get("files")) for a in feed.actions][-1] == (END_OF_STUDY, [])
    quiet = Feed(StudyTracker(settings(rename=False, on_end_of_study=False, on_reception=False)))
    quiet.store("S1", "A"); quiet.store("S1", "B")
    assert quiet.actions == []


def test_concurrent_senders_keep_their_studies_whole() -> None:
    feed = Feed(StudyTracker(settings()))
    a = feed.store("X", "A")
    b = feed.store("Y", "B")
    for _ in range(3):  # interleaved: DCMTK's global rule would start a folder at every switch
        assert feed.store("X", "A") == a
        assert feed.store("Y", "B") == b
    assert feed.hooks(END_OF_STUDY) == []
    feed.end("X")  # A was superseded by B's later objects and its sender is done
    assert [e["path"] for e in feed.hooks(END_OF_STUDY)] == [f"/out/{a}"]
    feed.end("Y")  # B is the latest study: it stays open, as the last study does in DCMTK
    assert len(feed.hooks(END_OF_STUDY)) == 1


def test_same_study_over_parallel_associations_is_one_study() -> None:
    feed = Feed(StudyTracker(settings()))
    folders = {feed.store(sender, "A") for sender in ("X", "Y", "Z", "X", "Y")}
    assert len(folders) == 1
    for sender in ("X", "Y", "Z"):
        feed.end(sender)
    assert feed.hooks(END_OF_STUDY) == []


def test_timeout_ends_a_silent_study_once_its_associations_are_over() -> None:
    tracker = StudyTracker(settings(timeout=2.0))
    folder, _ = tracker.place("S1", "A", "", 10.0, WALL, *OUT)
    tracker.stored("S1", "A", folder, "CT.1", "CT", values("S1"), 10.0, *OUT)
    assert tracker.tick(20.0) == []  # its association is still open (DCMTK waits for it too)
    tracker.sender_done("S1", 11.0)
    assert tracker.tick(12.9) == []
    actions = tracker.tick(13.0)
    assert [(a["action"], a["values"]["path"]) for a in actions] == [(END_OF_STUDY, f"/out/{folder}")]
    assert tracker.tick(30.0) == []  # once
    folder2, ended = tracker.place("S2", "A", "", 31.0, WALL + 21, *OUT)
    assert folder2 != folder and ended == []  # the same study UID again is a new study (DCMTK)


def test_without_sorting_only_reception_hooks() -> None:
    tracker = StudyTracker(settings(sort=None, rename=False, on_end_of_study=False))
    assert tracker.place("S", "A", "", 1.0, WALL, *OUT) == ("", [])
    actions = tracker.stored("S", None, "", "CT.1", "CT", values("S"), 1.0, *OUT)
    assert actions == [{"action": RECEPTION, "values": {**values("S"), "path": "/out", "file": "CT.1"}}]


def test_study_uid_is_required_when_sorting() -> None:
    with pytest.raises(UnsafeName, match="absent or empty"):
        StudyTracker(settings()).place("S", "", "", 1.0, WALL, *OUT)


def test_studies_starting_in_the_same_millisecond_get_distinct_folders() -> None:
    tracker = StudyTracker(settings())
    a, _ = tracker.place("X", "A", "", 1.0, WALL, *OUT)
    b, _ = tracker.place("Y", "B", "", 1.0, WALL, *OUT)
    assert a != b


def test_su_folder_is_reused_when_the_study_comes_back() -> None:
    feed = Feed(StudyTracker(settings(sort="studyuid")))
    a = feed.store("S", "1.2.3")
    feed.store("S", "1.2.4")
    assert feed.store("S", "1.2.3") == a == "PFX_1.2.3"


# ---- carrying out -------------------------------------------------------------------------

def test_rename_study_numbers_in_reception_order_and_never_overwrites(tmp_path: Path) -> None:
    for name in ("CT.1", "MR.2", "CT.3", "CT000001"):
        (tmp_path / name).write_text(name)
    done = rename_study(str(tmp_path), [{"file": "CT.1", "prefix": "CT"}, {"file": "MR.2", "prefix": "MR"},
                                        {"file": "CT.3", "prefix": "CT"}, {"file": "gone", "prefix": "CT"}],
                        fsync=True)
    # CT000001 existed (an earlier visit of the study to this -su folder): DCMTK would replace it.
    assert done == [("CT.1", "CT000002"), ("MR.2", "MR000003"), ("CT.3", "CT000004")]
    assert (tmp_path / "CT000001").read_text() == "CT000001"
    assert (tmp_path / "MR000003").read_text() == "MR.2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CT000001", "CT000002", "CT000004", "MR000003"]


def test_a_name_taken_after_the_listing_is_not_overwritten(tmp_path: Path, monkeypatch) -> None:
    # Another rename in the same folder (the study came back to its -su folder and ended again)
    # took CT000001 after this one listed the folder: the name is claimed, never replaced.
    (tmp_path / "CT.1").write_text("mine")
    listing = os.listdir(tmp_path)
    (tmp_path / "CT000001").write_text("theirs")
    monkeypatch.setattr(study_rename.os, "listdir", lambda fd: list(listing))
    assert rename_study(str(tmp_path), [{"file": "CT.1", "prefix": "CT"}], fsync=False) == [("CT.1", "CT000002")]
    assert (tmp_path / "CT000001").read_text() == "theirs" and (tmp_path / "CT000002").read_text() == "mine"


def test_without_hard_links_a_rename_still_never_overwrites(tmp_path: Path, monkeypatch) -> None:
    def no_links(*args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    for name in ("CT.1", "CT000001"):
        (tmp_path / name).write_text(name)
    listing = ["CT.1"]  # stale: CT000001 came after the listing
    monkeypatch.setattr(study_rename.os, "listdir", lambda fd: list(listing))
    monkeypatch.setattr(study_rename.os, "link", no_links)
    assert rename_study(str(tmp_path), [{"file": "CT.1", "prefix": "CT"}], fsync=True) == [("CT.1", "CT000002")]
    assert (tmp_path / "CT000001").read_text() == "CT000001"


def config(**kw: object) -> Config:
    return Config({**defaults(), **kw})


def test_hook_request_substitutes_inside_arguments() -> None:
    cfg = config(exec_on_reception="/bin/echo --file=#p/#f #a", exec_on_eostudy="/bin/echo #p #f")
    vals = {"path": "/out/PFX_1", "file": "CT.1", "calling_ae": 'x";touch PWNED;"', "called_ae": "C",
            "peer": "localhost"}
    request = hook_request(cfg, {"action": RECEPTION, "values": vals})
    assert request is not None
    assert request.argv == ["/bin/echo", "--file=/out/PFX_1/CT.1", 'x";touch PWNED;"']
    assert request.env["STORESCPD_CALLING_AE"] == 'x";touch PWNED;"'
    assert request.env["STORESCPD_EVENT"] == RECEPTION
    end = hook_request(cfg, {"action": END_OF_STUDY, "directory": "/out/PFX_1", "files": [], "values": vals})
    assert end is not None and end.argv == ["/bin/echo", "/out/PFX_1", "#f"]  # #f stays, as in DCMTK
    assert "STORESCPD_FILE" not in end.env


def test_a_peer_value_beginning_with_a_dash_reaches_the_hook_as_one_argument() -> None:
    # As DCMTK passes it (through its shell), but never split and never a command: the program
    # decides what its arguments mean (docs/hooks.md); the object's hook is never skipped.
    cfg = config(exec_on_reception="/usr/bin/prog #a #f", exec_on_eostudy="/usr/bin/prog #c #r")
    vals = {"path": "/out", "file": "CT.1", "calling_ae": "-rf /", "called_ae": "--x=y", "peer": "-oProxy=id"}
    reception = hook_request(cfg, {"action": RECEPTION, "values": vals})
    assert reception is not None and reception.argv == ["/usr/bin/prog", "-rf /", "CT.1"]
    end = hook_request(cfg, {"action": END_OF_STUDY, "directory": "/out", "files": [], "values": vals})
    assert end is not None and end.argv == ["/usr/bin/prog", "--x=y", "-oProxy=id"]


def recording_service(cfg: Config) -> tuple[StudyService, list[HookRequest]]:
    """The supervisor's service with the children it would start recorded, not started."""
    service = StudyService(cfg, in_supervisor=True)
    started: list[HookRequest] = []
    service.runner.start = started.append  # type: ignore[method-assign,assignment]
    return service, started


def store(service: StudyService, uid: str, file: str, directory: str) -> str:
    where = {"output_directory": directory, "root": os.path.realpath(directory)}
    folder = service.place("S1", {"study_uid": uid, "wall": WALL, **where})["folder"]
    service.stored("S1", {"study_uid": uid, "folder": folder, "file": file, "prefix": "CT",
                          "values": values("AE"), **where})
    return folder


def prelude_spec(request: HookRequest) -> dict:
    assert request.prelude is not None
    assert request.prelude.argv == [sys.executable, "-m", study_rename.JOB_MODULE]
    return json.loads(request.prelude.data)


def test_the_supervisor_renames_nothing_itself_the_end_of_study_child_does(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(); new.mkdir()
    cfg = config(output_directory=str(old), sort=["concurrent", "PFX"], rename_on_eostudy=True,
                 exec_on_eostudy="/bin/ls #p")
    service, started = recording_service(cfg)
    folder = store(service, "1.2.3", "CT.1", str(old))
    (old / folder).mkdir()
    (old / folder / "CT.1").write_text("object")

    service.reconfigure(cfg.replace(output_directory=str(new)))
    store(service, "1.2.4", "CT.2", str(new))  # another study: 1.2.3 ends, where its files are
    (request,) = started
    assert (request.label, request.argv) == ("--exec-on-eostudy", ["/bin/ls", str(old / folder)])
    assert prelude_spec(request)["files"] == [{"file": "CT.1", "prefix": "CT"}]
    assert sorted(p.name for p in (old / folder).iterdir()) == ["CT.1"]  # not in the supervisor's loop

    assert HookRunner().run_sync(request) == 0  # the child: rename, then become the hook
    assert (old / folder / "CT000001").read_text() == "object" and not (old / folder / "CT.1").exists()


def test_the_end_of_study_hook_starts_once_the_rename_is_done(tmp_path: Path, caplog) -> None:
    listing = tmp_path / "listing"
    (tmp_path / "P").mkdir()
    for name in ("CT.1", "MR.2"):
        (tmp_path / "P" / name).write_text(name)
    cfg = config(output_directory=str(tmp_path), sort=["concurrent", "P"], rename_on_eostudy=True,
                 exec_on_eostudy=f"sh -c 'ls \"$1\" > {listing}; grep -E \"^Sig(Blk|Ign)\" /proc/self/status' -- #p")
    action = {"action": END_OF_STUDY, "directory": str(tmp_path / "P"),
              "files": [{"file": "CT.1", "prefix": "CT"}, {"file": "MR.2", "prefix": "MR"}],
              "values": {**values("AE"), "path": str(tmp_path / "P")}}
    request = child_request(cfg, action)
    assert request is not None
    caplog.set_level(logging.INFO, "storescpd.hooks")
    assert HookRunner().run_sync(request) == 0
    assert listing.read_text().split() == ["CT000001", "MR000002"]
    # The hook starts as any hook does: nothing blocked, the signals the child's Python ignored or
    # blocked (SIGPIPE, SIGXFSZ; the stop signals during the rename) back to their defaults.
    blocked, ignored = (int(re.search(name + r":\\t([0-9a-f]+)", caplog.text).group(1), 16)  # type: ignore[union-attr]
                        for name in ("SigBlk", "SigIgn"))
    assert blocked == 0
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        assert not ignored & (1 << (signum - 1)), signum


def test_a_rename_without_hook_is_a_quiet_child(tmp_path: Path) -> None:
    (tmp_path / "CT.1").write_text("x")
    cfg = config(output_directory=str(tmp_path), sort=["concurrent", "P"], rename_on_eostudy=True)
    action = {"action": END_OF_STUDY, "directory": str(tmp_path), "files": [{"file": "CT.1", "prefix": "CT"}],
              "values": {**values("AE"), "path": str(tmp_path)}}
    request = child_request(cfg, action)
    assert request is not None and request.argv == [] and request.label == "--rename-on-eostudy"
    assert HookRunner().run_sync(request) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["CT000001"]
    assert child_request(cfg, {**action, "files": []}) is None  # nothing to rename, no hook: no child


def test_an_end_of_study_hook_that_cannot_be_executed_is_logged_after_the_rename(tmp_path: Path, capfd) -> None:
    (tmp_path / "CT.1").write_text("x")
    cfg = config(output_directory=str(tmp_path), sort=["concurrent", "P"], rename_on_eostudy=True,
                 exec_on_eostudy="/nonexistent/hook #p")
    action = {"action": END_OF_STUDY, "directory": str(tmp_path), "files": [{"file": "CT.1", "prefix": "CT"}],
              "values": {**values("AE"), "path": str(tmp_path)}}
    request = child_request(cfg, action)
    assert request is not None
    assert HookRunner().run_sync(request) == study_rename.EXIT_CANNOT_EXECUTE
    assert "cannot execute --exec-on-eostudy command '/nonexistent/hook'" in capfd.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["CT000001"]


def test_a_study_never_spans_two_output_directories(tmp_path: Path) -> None:
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    cfg = config(output_directory=old, sort=["studyuid", ""], exec_on_eostudy="/bin/echo #p")
    service, started = recording_service(cfg)
    store(service, "1.2.3", "CT.1", old)
    service.reconfigure(cfg.replace(output_directory=new))
    store(service, "1.2.3", "CT.2", old)  # a worker of before the reload: same study
    assert started == []
    store(service, "1.2.3", "CT.3", new)
    assert [r.argv for r in started] == [["/bin/echo", f"{old}/1.2.3"]]  # ended in the old directory
    assert [r.prelude for r in started] == [None]  # no -rns: the hook alone
    (study,) = service.tracker.open.values()
    assert study.folder == "1.2.3" and study.directory == str(tmp_path / "new" / "1.2.3")


def test_with_exec_sync_the_worker_gets_the_rename_and_the_hooks_back(tmp_path: Path) -> None:
    cfg = config(output_directory=str(tmp_path), sort=["concurrent", "P"], rename_on_eostudy=True,
                 exec_on_reception="/bin/echo #f", exec_on_eostudy="/bin/echo #p", exec_sync=True)
    service, started = recording_service(cfg)
    where = {"output_directory": str(tmp_path), "root": str(tmp_path)}
    for uid, file in (("1.2.3", "CT.1"), ("1.2.4", "CT.2")):
        folder = service.place("S1", {"study_uid": uid, "wall": WALL, **where})["folder"]
        back = service.stored("S1", {"study_uid": uid, "folder": folder, "file": file, "prefix": "CT",
                                     "values": values("AE"), **where}, hand_back=True)
    assert [a["action"] for a in back] == [RECEPTION, END_OF_STUDY]
    assert [f["file"] for f in back[1]["files"]] == ["CT.1"]
    assert started == []  # the worker carries them out and waits; the supervisor starts nothing


def test_associations_on_both_sides_of_a_reload_fill_one_folder_each(tmp_path: Path) -> None:
    """OLD began before a reload that changed -od, NEW after it; their objects of one study
    interleave. Each directory keeps one folder, ended once its association is done."""
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    tracker = StudyTracker(TrackerSettings("concurrent", "P", True, 0.0, False, False))
    placed = []
    for n, (sender, directory) in enumerate([("OLD", old), ("NEW", new), ("OLD", old), ("NEW", new)]):
        folder, ended = tracker.place(sender, "1.2.3", "", float(n), 1e9 + n, directory, directory)
        assert ended == []
        tracker.stored(sender, "1.2.3", folder, f"CT.{n}", "CT", {}, float(n), directory, directory)
        placed.append((directory, folder))
    assert len(set(placed)) == 2
    ended = tracker.sender_done("OLD", 10.0)
    assert [(a["directory"], [f["file"] for f in a["files"]]) for a in ended] == \
        [(os.path.join(old, placed[0][1]), ["CT.0", "CT.2"])]
    ended = tracker.place("NEW", "1.2.4", "", 11.0, 1e9 + 11, new, new)[1]  # NEW moves on: its study ends
    assert [[f["file"] for f in a["files"]] for a in ended] == [["CT.1", "CT.3"]]
