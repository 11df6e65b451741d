"""safe_extract against real archives, well-formed and hostile."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from dataset_files import tar_bytes

from cnnctl.data.archive import safe_extract
from cnnctl.errors import DataError

FILES = {"batches/data_1.bin": b"\x01" * 3000, "batches/meta.txt": b"airplane\nbird\n", "readme.txt": b"hello"}


def make_tar(path: Path, mode: str = "w:gz", files: dict[str, bytes] = FILES,
             extra: list[tarfile.TarInfo] | None = None) -> Path:
    path.write_bytes(tar_bytes(files, extra, mode))
    return path


def make_zip(path: Path, files: dict[str, bytes] = FILES, extra: list[zipfile.ZipInfo] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        for info in extra or []:
            bundle.writestr(info, b"/etc/passwd")
    return path


def assert_extracted(destination: Path) -> None:
    for name, data in FILES.items():
        assert (destination / name).read_bytes() == data


def assert_nothing_left(out: Path, name: str = "") -> None:
    """No destination and no half-extracted staging folder (only what ``name`` does not match may be there)."""
    if out.exists():
        assert [p.name for p in out.iterdir() if p.name.startswith(".") or p.name == (name or p.name)] == []


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "downloads").mkdir()
    return tmp_path / "downloads", tmp_path / "out"


@pytest.mark.parametrize(("suffix", "mode"), [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w"),
                                              (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_tar_archives_extract(dirs: tuple[Path, Path], suffix: str, mode: str) -> None:
    downloads, out = dirs
    archive = make_tar(downloads / f"set{suffix}", mode)
    destination = safe_extract(archive, out / "set")
    assert destination == out / "set"
    assert_extracted(destination)
    assert sorted(p.name for p in out.iterdir()) == ["set"]


def test_zip_extracts(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    destination = safe_extract(make_zip(downloads / "set.zip"), out / "set")
    assert_extracted(destination)
    assert sorted(p.name for p in out.iterdir()) == ["set"]


def test_read_only_directory_member_does_not_block_its_files(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    folder = tarfile.TarInfo("locked")
    folder.type = tarfile.DIRTYPE
    folder.mode = 0o555
    inner = tarfile.TarInfo("locked/file.txt")
    inner.size = 4
    destination = safe_extract(make_tar(downloads / "ro.tar.gz", files={}, extra=[folder, inner]), out / "ro")
    assert (destination / "locked" / "file.txt").read_bytes() == b"xxxx"
    assert stat.S_IMODE((destination / "locked").stat().st_mode) & 0o700 == 0o700


def test_existing_destination_is_replaced_only_on_success(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    destination = out / "set"
    destination.mkdir(parents=True)
    (destination / "old.txt").write_text("old")
    broken = downloads / "broken.tar.gz"
    good = make_tar(downloads / "good.tar.gz").read_bytes()
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError):
        safe_extract(broken, destination)
    assert (destination / "old.txt").read_text() == "old"
    safe_extract(downloads / "good.tar.gz", destination)
    assert_extracted(destination)
    assert not (destination / "old.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["set"]


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    return info


@pytest.mark.parametrize(("member", "why"), [
    (_tar_member("../evil", size=4), "'..'"),
    (_tar_member("batches/../../evil", size=4), "'..'"),
    (_tar_member("/tmp/evil-absolute", size=4), "absolute"),
    (_tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (_tar_member("inside-link", tarfile.SYMTYPE, "readme.txt"), "link"),
    (_tar_member("hard", tarfile.LNKTYPE, "readme.txt"), "link"),
    (_tar_member("pipe", tarfile.FIFOTYPE), "special"),
    (_tar_member("dev", tarfile.CHRTYPE), "special"),
])
def test_hostile_tar_members_are_refused(dirs: tuple[Path, Path], member: tarfile.TarInfo, why: str) -> None:
    downloads, out = dirs
    archive = make_tar(downloads / "evil.tar.gz", extra=[member])
    with pytest.raises(DataError, match=why) as caught:
        safe_extract(archive, out / "evil")
    assert str(archive) in str(caught.value) and member.name in str(caught.value)
    assert_nothing_left(out)
    assert not (out.parent / "evil").exists() and not Path("/tmp/evil-absolute").exists()


def _zip_symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(("member", "why"), [
    (zipfile.ZipInfo("../evil"), "'..'"),
    (zipfile.ZipInfo("/abs/evil"), "absolute"),
    (zipfile.ZipInfo("C:/windows/evil"), "absolute"),
    (zipfile.ZipInfo("sub\\..\\..\\evil"), "'..'"),
    (_zip_symlink("link"), "symbolic link"),
])
def test_hostile_zip_members_are_refused(dirs: tuple[Path, Path], member: zipfile.ZipInfo, why: str) -> None:
    downloads, out = dirs
    archive = make_zip(downloads / "evil.zip", extra=[member])
    with pytest.raises(DataError, match=why) as caught:
        safe_extract(archive, out / "evil")
    assert str(archive) in str(caught.value) and member.filename in str(caught.value)
    assert_nothing_left(out)


@pytest.mark.parametrize("kind", ["tar.gz", "tar.bz2", "tar.xz", "tar", "zip"])
def test_truncated_archive_is_corrupt_and_leaves_nothing(dirs: tuple[Path, Path], kind: str) -> None:
    downloads, out = dirs
    big = {f"part_{i}.bin": bytes([i]) * 5000 for i in range(6)}
    good = downloads / f"good.{kind}"
    if kind == "zip":
        make_zip(good, big)
    else:
        make_tar(good, {"tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz", "tar": "w"}[kind], big)
    data = good.read_bytes()
    truncated = downloads / f"truncated.{kind}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as caught:
        safe_extract(truncated, out / "set")
    assert str(truncated) in str(caught.value)
    assert_nothing_left(out)


def test_tar_cut_at_a_block_boundary_is_truncated(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    data = make_tar(downloads / "good.tar", "w").read_bytes()
    cut = downloads / "cut.tar"
    cut.write_bytes(data[: 512 * 3])  # header + data of the first member, then nothing: no end marker
    with pytest.raises(DataError, match="corrupt or truncated"):
        safe_extract(cut, out / "set")
    assert_nothing_left(out)


def test_garbage_is_corrupt(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    for name in ("junk.tar.gz", "junk.zip", "junk.bin"):
        (downloads / name).write_bytes(b"this is not an archive at all" * 20)
        with pytest.raises(DataError, match="corrupt or truncated"):
            safe_extract(downloads / name, out / "set")
    assert_nothing_left(out)


def test_too_many_members_are_refused(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    many = {f"f{i}.txt": b"x" for i in range(20)}
    for archive in (make_tar(downloads / "many.tar.gz", files=many), make_zip(downloads / "many.zip", many)):
        with pytest.raises(DataError, match="more than 10 members"):
            safe_extract(archive, out / "set", max_members=10)
        assert_nothing_left(out, "set")
        assert safe_extract(archive, out / archive.name, max_members=20).is_dir()


def test_too_many_bytes_are_refused(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    bomb = {"zeros.bin": b"\0" * 200_000}
    for archive in (make_tar(downloads / "bomb.tar.gz", files=bomb), make_zip(downloads / "bomb.zip", bomb)):
        assert archive.stat().st_size < 2_000
        with pytest.raises(DataError, match="unpacks to more than"):
            safe_extract(archive, out / "set", max_total_bytes=100_000)
        assert_nothing_left(out)


def test_zip_lying_about_its_size_is_corrupt(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    archive = make_zip(downloads / "liar.zip", {"zeros.bin": b"\0" * 200_000})
    data = bytearray(archive.read_bytes())
    # Shrink the declared uncompressed size in the central directory; zipfile then stops reading early and
    # fails the CRC check, which must surface as corruption rather than a partial extraction.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError):
        safe_extract(archive, out / "set", max_total_bytes=100_000)
    assert_nothing_left(out)


def test_missing_archive(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    with pytest.raises(DataError, match="missing"):
        safe_extract(downloads / "absent.tar.gz", out / "set")


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_deeply_nested_members_are_refused_not_recursed_into(dirs: tuple[Path, Path], kind: str) -> None:
    downloads, out = dirs
    deep = "d/" * 1500 + "data_batch_1"  # os.makedirs / Path.mkdir recurse once per folder
    if kind == "tar":
        archive = make_tar(downloads / "deep.tar.gz", files={**FILES, deep: b"x"})
    else:
        archive = make_zip(downloads / "deep.zip", files={**FILES, deep: b"x"})
    with pytest.raises(DataError, match="is nested 1,501 folders deep \\(more than 64\\)") as caught:
        safe_extract(archive, out / "deep")
    assert str(archive) in str(caught.value) and len(str(caught.value)) < 600
    assert_nothing_left(out)


def test_members_nested_within_the_bound_extract(dirs: tuple[Path, Path]) -> None:
    downloads, out = dirs
    nested = "a/" * 60 + "file.bin"
    archive = make_tar(downloads / "nested.tar.gz", files={**FILES, nested: b"ok"})
    assert (safe_extract(archive, out / "nested") / nested).read_bytes() == b"ok"
