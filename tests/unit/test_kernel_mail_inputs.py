"""Mail decoding, which mails make the series, and the one input-kind detector
(issue 18, kinds 2-4). Real mail shapes: quoted-printable, base64, Latin-1, MIME attachments,
RFC/RESEND/subsystem prefixes, lore threads with cover letters, replies and rerolls."""

from __future__ import annotations

import email.mime.multipart
import email.mime.text
import re
import shutil
from pathlib import Path

import pytest

from kvmple import cli
from kvmple.errors import PatchError
from kvmple.kernel.inputs import InputKind, detect_input
from kvmple.kernel.seriesinput import open_series
from kvmple.kernel.sources import load_format_patch, load_mbox, materialise
from tests.unit.mail_inputs import BASE, lore_thread, mail, patch_body, write_mbox

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"


# ------------------------------------------------------------------ kind 2: decoding


def test_case_quoted_printable_mbox_is_decoded() -> None:
    """Case mbox-quoted-printable: =3D, =20 and a soft line break decode to the real diff."""
    [patch] = load_mbox(CASES / "mbox-quoted-printable" / "patch.mbox").patches
    assert patch.subject == "demo: change b"
    assert "-int b = 2;\n+int b = 3;\n int c = 4;\n" in patch.text
    assert "=3D" not in patch.text and "=20" not in patch.text


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "8bit"])
def test_encoded_bodies_decode_to_the_same_diff(tmp_path: Path, cte: str) -> None:
    body = patch_body("Change b.", "int b = 2;", "int b = 3;")
    path = write_mbox(tmp_path / "m", [mail("[PATCH] demo: b", body, msgid="a@x", cte=cte)])
    [patch] = load_mbox(path).patches
    assert "-int b = 2;\n+int b = 3;\n" in patch.text


def test_latin1_charset_is_decoded_to_utf8(tmp_path: Path) -> None:
    body = patch_body("Ändere b für Jörg.", "int b = 2;", "int b = 3;")
    data = mail(
        "[PATCH] demo: b",
        body,
        msgid="l@x",
        author="=?iso-8859-1?q?J=F6rg_M=FCller?= <jm@example.com>",
        cte="quoted-printable",
        charset="iso-8859-1",
    )
    [patch] = load_mbox(write_mbox(tmp_path / "m", [data])).patches
    assert "Ändere b für Jörg." in patch.text
    assert patch.author == "Jörg Müller <jm@example.com>"


def test_patch_in_a_mime_attachment(tmp_path: Path) -> None:
    outer = email.mime.multipart.MIMEMultipart()
    outer["From"] = "A <a@example.com>"
    outer["Subject"] = "[PATCH] demo: attached"
    outer["Message-ID"] = "<att@x>"
    outer.attach(email.mime.text.MIMEText("See the attachment.\n"))
    attachment = email.mime.text.MIMEText(
        patch_body("Change b.", "int b = 2;", "int b = 3;"), "x-patch", "utf-8"
    )
    attachment.add_header("Content-Disposition", "attachment", filename="b.patch")
    outer.attach(attachment)
    [patch] = load_mbox(write_mbox(tmp_path / "m", [outer.as_bytes()])).patches
    assert "+int b = 3;" in patch.text
    assert "Content-Transfer-Encoding: base64" not in patch.text


# ------------------------------------------------------- kind 3: which mails make it


def test_case_format_patch_cover_letter_is_dropped() -> None:
    found = load_format_patch(CASES / "format-patch-cover-letter" / "patches")
    assert [p.subject for p in found.patches] == ["kvm: first change", "kvm: second change"]
    assert len(found.dropped) == 1
    assert "0000-cover-letter.patch" in found.dropped[0]
    assert "cover letter" in found.dropped[0]


def test_lore_thread_newest_revision_in_order_with_trailers(tmp_path: Path) -> None:
    found = load_mbox(lore_thread(tmp_path / "t.mbox"))
    assert (found.revision, found.revisions) == (2, (1, 2))
    assert [p.subject for p in found.patches] == ["demo: change b", "demo: change c"]
    assert "+int b = 33;" in found.patches[0].text  # v2's value, not v1's 3
    assert found.patches[0].trailers == (
        "Reviewed-by: Rev Iewer <rev@example.com>",
        "Acked-by: Ack Er <ack@example.com>",  # on the cover: for every patch
    )
    message = found.patches[0].text.split("\n---\n")[0]
    assert message.endswith(
        "Reviewed-by: Rev Iewer <rev@example.com>\nAcked-by: Ack Er <ack@example.com>"
    )
    why = "\n".join(found.dropped)
    assert "'[PATCH 1/2] demo: change b': revision v1; v2 (the newest) is applied" in why
    assert "'[PATCH v2 0/2] demo: two changes': the cover letter of v2" in why
    assert "'Re: [PATCH v2 2/2] demo: change c': a reply without a diff" in why
    assert len(found.dropped) == 8


def test_revision_option_picks_an_older_one(tmp_path: Path) -> None:
    found = load_mbox(lore_thread(tmp_path / "t.mbox"), revision=1)
    assert found.revision == 1
    assert "+int b = 3;" in found.patches[0].text
    assert any("v1 is applied" in d for d in found.dropped)
    with pytest.raises(PatchError, match=r"no revision v7 .*") as caught:
        load_mbox(tmp_path / "t.mbox", revision=7)
    assert "v1, v2" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "prefix",
    [
        "[RFC PATCH v2 net-next {m}/2]",
        "[PATCH RESEND v2 {m}/2]",
        "[PATCH -v2 {m}/2]",
        "[PATCHv2 {m}/2]",
        "[RFC][PATCH v2 {m}/2] KVM: x86:",
    ],
)
def test_subject_prefixes(tmp_path: Path, prefix: str) -> None:
    mails = [
        mail(
            prefix.format(m=2) + " two", patch_body("Two.", "int c = 4;", "int c = 5;"), msgid="2@x"
        ),
        mail(
            prefix.format(m=1) + " one", patch_body("One.", "int b = 2;", "int b = 3;"), msgid="1@x"
        ),
        mail(
            "[PATCH 1/1] old one",
            patch_body("Old.", "int b = 2;", "int b = 9;"),
            msgid="old@x",
            date="Mon, 1 Aug 2005 10:00:00 +0000",
        ),
    ]
    found = load_mbox(write_mbox(tmp_path / "m", mails))
    assert found.revision == 2
    assert [p.subject.split()[-1] for p in found.patches] == ["one", "two"]


def test_incomplete_revision_is_refused(tmp_path: Path) -> None:
    mails = [
        mail("[PATCH v3 2/3] two", patch_body("Two.", "int c = 4;", "int c = 5;"), msgid="2@x")
    ]
    with pytest.raises(
        PatchError, match=re.escape("revision v3 is incomplete: patch(es) 1/3, 3/3")
    ):
        load_mbox(write_mbox(tmp_path / "m", mails))


def test_only_diffless_mails_is_an_error(tmp_path: Path) -> None:
    path = write_mbox(tmp_path / "m", [mail("[PATCH 0/2] cover", "words\n", msgid="c@x")])
    with pytest.raises(PatchError, match="none with a diff"):
        load_mbox(path)


def test_unnumbered_format_patch_files_keep_their_order(tmp_path: Path) -> None:
    for n, (old, new) in enumerate([("int b = 2;", "int b = 3;"), ("int c = 4;", "int c = 5;")]):
        (tmp_path / f"000{n + 1}-x.patch").write_bytes(
            b"From 0000 Mon Sep 17 00:00:00 2001\n"
            + mail(f"[PATCH] change {n}", patch_body("x", old, new), msgid=f"u{n}@x")
        )
    found = load_format_patch(tmp_path)
    assert [p.subject for p in found.patches] == ["change 0", "change 1"]


# ------------------------------------------------------ kind 4: one input detector


def test_detector_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lore_thread(tmp_path / "thread.mbx")
    (tmp_path / "one.patch").write_text("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    quilt = tmp_path / "q"
    quilt.mkdir()
    (quilt / "series").write_text("x.patch\n")
    fp = tmp_path / "fp"
    shutil.copytree(CASES / "format-patch-cover-letter" / "patches", fp)
    manifest = tmp_path / "m"
    shutil.copytree(CASES / "format-patch-cover-letter" / "series", manifest)
    git = tmp_path / "g"
    (git / ".git").mkdir(parents=True)
    assert detect_input(Path("thread.mbx")).kind is InputKind.mbox
    assert detect_input(Path("one.patch")).kind is InputKind.diff
    assert detect_input(Path("q")).kind is InputKind.quilt
    assert detect_input(Path("fp")).kind is InputKind.format_patch
    assert detect_input(Path("m")).kind is InputKind.manifest
    assert detect_input(Path("m/series.yaml")).kind is InputKind.manifest
    assert detect_input(Path("g")).kind is InputKind.git
    assert detect_input(Path("thread.mbx")).path == tmp_path / "thread.mbx"


def test_detector_says_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("just some notes\n")
    with pytest.raises(PatchError, match=r"looked for .* it starts with 'just some notes'"):
        detect_input(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchError, match="a folder, but not a series"):
        detect_input(tmp_path / "empty")


def test_series_show_lists_an_mbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    lore_thread(tmp_path / "thread.mbx")
    assert cli.main(["kernel", "series", "show", "thread.mbx"]) == 0
    out = capsys.readouterr().out
    assert "input      mbox" in out and "revisions  v1, v2" in out
    assert "1. demo: change b" in out and "2. demo: change c" in out
    assert "dropped" in out and "cover letter" in out
    assert cli.main(["kernel", "series", "show", "thread.mbx", "--revision", "1"]) == 0
    assert "thread: demo: two changes (v1)" in capsys.readouterr().out


def test_from_path_is_relative_to_the_cwd_not_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--series DIR --from patch.mbox` reads ./patch.mbox, not DIR/patch.mbox."""
    case = tmp_path / "case"
    shutil.copytree(CASES / "mbox-quoted-printable", case)
    monkeypatch.chdir(case)
    opened = open_series("series")
    found = materialise(opened.series, opened.folder, override=Path("patch.mbox"))
    assert found.patches[0].origin.startswith(f"mbox {case / 'patch.mbox'}")


def test_git_tree_needs_a_range(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    with pytest.raises(PatchError, match="is a git tree"):
        open_series(str(tmp_path))


def test_base_is_what_the_builders_patch() -> None:
    assert "int b = 2;" in BASE


def test_a_resend_replaces_the_earlier_copy(tmp_path: Path) -> None:
    early, late = "Mon, 1 Aug 2005 10:00:00 +0000", "Mon, 8 Aug 2005 10:00:00 +0000"
    one = patch_body("One.", "int b = 2;", "int b = 3;")
    two = patch_body("Two.", "int c = 4;", "int c = 5;")
    mails = [
        mail("[PATCH v2 1/2] one", one, msgid="a1@x", date=early),
        mail("[PATCH v2 2/2] two", two, msgid="a2@x", date=early),
        mail("[PATCH RESEND v2 1/2] one", one, msgid="b1@x", date=late),
    ]
    found = load_mbox(write_mbox(tmp_path / "m", mails))
    assert [(p.subject, p.origin.split()[-1]) for p in found.patches] == [
        ("one", "3"),
        ("two", "2"),
    ]
    assert found.dropped == [
        f"mbox {tmp_path / 'm'} message 1 '[PATCH v2 1/2] one': an earlier copy of v2 1/2; "
        "'[PATCH RESEND v2 1/2] one' is newer"
    ]


def test_a_reply_carrying_a_diff_is_not_a_patch_of_the_series(tmp_path: Path) -> None:
    mails = [
        mail("[PATCH 1/1] one", patch_body("One.", "int b = 2;", "int b = 3;"), msgid="p@x"),
        mail(
            "Re: [PATCH 1/1] one",
            "How about this instead?\n\n" + patch_body("Alt.", "int b = 2;", "int b = 7;"),
            msgid="r@x",
            reply_to="p@x",
            author="R <r@example.com>",
        ),
    ]
    found = load_mbox(write_mbox(tmp_path / "m", mails))
    assert [p.subject for p in found.patches] == ["one"]
    assert "+int b = 3;" in found.patches[0].text
    assert found.dropped[0].endswith(
        "a reply carrying a diff (a suggestion in the discussion, not a patch of the series)"
    )


def test_nightly_config_takes_an_mbox_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a config, paths are relative to the config; the same detector opens them."""
    from kvmple.nightly.config import load_config

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    lore_thread(jobs / "thread.mbx")
    (jobs / "nightly.yaml").write_text(
        "name: mail\ntree: {path: ../linux, ref: main}\nseries: thread.mbx\n"
        "series_revision: 1\nplaybook: p.yaml\n"
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(jobs / "nightly.yaml").config
    assert config.series == str(jobs / "thread.mbx")
    opened = open_series(config.series, revision=config.series_revision)
    assert opened.kind is InputKind.mbox and opened.series.version == "v1"


def test_a_saved_encoded_mail_in_a_quilt_series_is_decoded(tmp_path: Path) -> None:
    """Kind 2 for quilt folders: a series may list saved mails; patch(1) gets the diff."""
    from kvmple.kernel.sources import from_quilt

    body = patch_body("Change b.", "int b = 2;", "int b = 3;")
    (tmp_path / "b.patch").write_bytes(mail("[PATCH] demo: b", body, msgid="q@x", cte="base64"))
    (tmp_path / "plain.patch").write_text("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    (tmp_path / "series").write_text("b.patch\nplain.patch\n")
    encoded, plain = from_quilt(tmp_path)
    assert "-int b = 2;\n+int b = 3;\n" in encoded.text
    assert encoded.subject == "demo: b"
    assert plain.text == "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"  # untouched
