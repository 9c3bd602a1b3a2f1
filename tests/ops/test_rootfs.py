"""The offline path of the runner image: which Debian mirror it uses."""

from __future__ import annotations

from pathlib import Path

from sandbox.ops.rootfs import debian_mirror


def test_debian_mirror_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.org/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example.org/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example.org/debian"


def test_debian_mirror_from_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb-src http://src.example.org/debian bookworm main\n"
        "deb [arch=amd64] http://ftp.example.org/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://ftp.example.org/debian"


def test_debian_mirror_default_when_apt_has_none(tmp_path: Path) -> None:
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"
