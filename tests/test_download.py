"""scripts/download_data.py against a local HTTP server (127.0.0.1) and a local mirror."""

import hashlib
import http.server
import importlib.util
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A local mirror laid out like download_data.py's output, where the workplace has one.
MIRROR_DATA = REPO.parent / "shared" / "data"
spec = importlib.util.spec_from_file_location("download_data", REPO / "scripts/download_data.py")
dd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dd)

DATA = bytes(range(256)) * 400  # 100 kB, several read chunks
SHA = hashlib.sha256(DATA).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files with Range support; can cut one response short or ignore Range."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        if wanted and not server.ignore_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", server.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:
            # Send part of the body, then close the connection: an interrupted transfer.
            self.wfile.write(body[: server.cut_after])
            server.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests = {"/data.bin": DATA}, []
    httpd.cut_after, httpd.ignore_range = None, False
    httpd.content_type = "application/octet-stream"
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # A short poll interval makes shutdown() quick.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_and_places_the_file(server, tmp_path):
    target = tmp_path / "sub" / "data.bin"
    dd.download(f"{server.url}/data.bin", target, SHA)
    assert target.read_bytes() == DATA
    assert list(target.parent.iterdir()) == [target]  # no .part left
    assert server.requests == [("/data.bin", None)]
    dd.download(f"{server.url}/data.bin", target, SHA)  # present and verified: no request
    assert len(server.requests) == 1


def test_checksum_mismatch_is_one_clear_error_and_leaves_nothing(server, tmp_path):
    target = tmp_path / "data.bin"
    with pytest.raises(SystemExit) as error:
        dd.download(f"{server.url}/data.bin", target, "0" * 64)
    message = str(error.value)
    assert "checksum mismatch" in message and str(target) in message
    assert "0" * 64 in message and SHA in message and "run again" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_is_resumed_with_range(server, tmp_path):
    server.cut_after = 30000
    target = tmp_path / "data.bin"
    dd.download(f"{server.url}/data.bin", target, SHA, retries=1)
    assert target.read_bytes() == DATA
    assert server.requests == [("/data.bin", None), ("/data.bin", "bytes=30000-")]


def test_interrupted_run_keeps_the_part_and_the_next_run_resumes(server, tmp_path):
    server.cut_after = 30000
    target = tmp_path / "data.bin"
    with pytest.raises(SystemExit, match="run the same command again to resume"):
        dd.download(f"{server.url}/data.bin", target, SHA, retries=0)
    part = tmp_path / "data.bin.part"
    assert not target.exists() and part.stat().st_size == 30000
    dd.download(f"{server.url}/data.bin", target, SHA, retries=0)
    assert target.read_bytes() == DATA and not part.exists()
    assert server.requests[-1] == ("/data.bin", "bytes=30000-")


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "data.bin.part").write_bytes(b"stale bytes")
    dd.download(f"{server.url}/data.bin", tmp_path / "data.bin", SHA)
    assert (tmp_path / "data.bin").read_bytes() == DATA


def test_http_errors_and_html_pages_are_clear_errors(server, tmp_path):
    with pytest.raises(SystemExit, match="HTTP 404"):
        dd.download(f"{server.url}/missing.bin", tmp_path / "missing.bin", SHA)
    server.content_type = "text/html"
    with pytest.raises(SystemExit, match="HTML page.*save it as"):
        dd.download(f"{server.url}/data.bin", tmp_path / "data.bin", SHA)
    assert list(tmp_path.iterdir()) == []


def test_unknown_checksum_warns_and_checks_the_size(server, tmp_path, capsys):
    dd.download(f"{server.url}/data.bin", tmp_path / "data.bin", None, size=len(DATA))
    assert "checksum is NOT verified" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="size mismatch"):
        dd.download(f"{server.url}/data.bin", tmp_path / "other.bin", None, size=5)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()


def test_an_existing_file_with_other_content_is_an_error(server, tmp_path):
    (tmp_path / "data.bin").write_bytes(b"something else")
    with pytest.raises(SystemExit, match="exists but its sha256 is .* delete it"):
        dd.download(f"{server.url}/data.bin", tmp_path / "data.bin", SHA)


def test_main_with_base_url_downloads_and_extracts(server, tmp_path, monkeypatch):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("snli_1.0/snli_1.0_dev.jsonl", '{"gold_label": "neutral"}\n')
    server.files["/snli/snli_1.0.zip"] = archive.getvalue()
    entry = {
        "path": "snli/snli_1.0.zip",
        "url": "https://example.invalid/snli_1.0.zip",  # --base-url replaces it
        "sha256": hashlib.sha256(archive.getvalue()).hexdigest(),
        "extract": {"snli_1.0/snli_1.0_dev.jsonl": "snli/snli_1.0_dev.jsonl"},
    }
    monkeypatch.setitem(dd.DOWNLOADS, "snli", [entry])
    dest = tmp_path / "raw"
    dd.main(["--dataset", "snli", "--dest", str(dest), "--base-url", server.url])
    assert (dest / "snli/snli_1.0_dev.jsonl").read_text() == '{"gold_label": "neutral"}\n'
    assert sorted(p.name for p in (dest / "snli").iterdir()) == [
        "snli_1.0.zip",
        "snli_1.0_dev.jsonl",
    ]


def test_an_archive_without_known_checksum_is_size_checked_and_extracted(
    server, tmp_path, monkeypatch, capsys
):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        member = tarfile.TarInfo("sumdata/Giga/input.txt")
        member.size = len(b"an article\n")
        tar.addfile(member, io.BytesIO(b"an article\n"))
    server.files["/gigaword/summary.tar.gz"] = archive.getvalue()
    entry = {
        "path": "gigaword/summary.tar.gz",
        "url": "https://example.invalid/summary.tar.gz",
        "sha256": None,
        "size": len(archive.getvalue()),
        "extract": {"sumdata/Giga/input.txt": "gigaword/test.article.txt"},
    }
    monkeypatch.setitem(dd.DOWNLOADS, "gigaword", [entry])
    argv = ["--dataset", "gigaword", "--dest", str(tmp_path), "--base-url", server.url]
    dd.main(argv)
    assert (tmp_path / "gigaword/test.article.txt").read_text() == "an article\n"
    assert "checksum is NOT verified" in capsys.readouterr().out
    monkeypatch.setitem(entry["extract"], "sumdata/absent.txt", "gigaword/absent.txt")
    with pytest.raises(SystemExit, match="has no member sumdata/absent.txt"):
        dd.main(argv)


def test_mirror_copies_and_verifies(tmp_path, monkeypatch, capsys):
    mirror, dest = tmp_path / "mirror", tmp_path / "raw"
    (mirror / "gigaword_sample").mkdir(parents=True)
    (mirror / "gigaword_sample/train.title.txt.gz").write_bytes(DATA)
    monkeypatch.setitem(dd.MIRROR, "gigaword", {"gigaword_sample/train.title.txt.gz": SHA})
    dd.main(["--dataset", "gigaword", "--mirror", str(mirror), "--dest", str(dest)])
    assert (dest / "gigaword_sample/train.title.txt.gz").read_bytes() == DATA
    assert str(dest / "gigaword_sample") in capsys.readouterr().out

    monkeypatch.setitem(dd.MIRROR, "gigaword", {"gigaword_sample/train.title.txt.gz": "1" * 64})
    with pytest.raises(SystemExit, match="checksum mismatch"):
        dd.main(["--dataset", "gigaword", "--mirror", str(mirror), "--dest", str(tmp_path / "x")])
    assert not (tmp_path / "x/gigaword_sample/train.title.txt.gz").exists()


def test_missing_mirror_file_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setitem(dd.MIRROR, "gigaword", {"gigaword_sample/train.title.txt.gz": SHA})
    with pytest.raises(SystemExit) as error:
        dd.main(["--dataset", "gigaword", "--mirror", str(tmp_path), "--dest", str(tmp_path)])
    assert str(error.value).startswith("error: mirror file missing: ")
    assert str(tmp_path / "gigaword_sample/train.title.txt.gz") in str(error.value)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dd.main(["--mirror", str(tmp_path / "nowhere")])
    assert "error: --mirror directory not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dd.main(["--dataset", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err


def test_manifest_is_complete_and_consistent():
    assert set(dd.DOWNLOADS) == set(dd.MIRROR) == set(dd.DATASETS)
    entries = [entry for entries in dd.DOWNLOADS.values() for entry in entries]
    assert len({entry["path"] for entry in entries}) == len(entries)
    assert all(entry["url"].startswith("https://") for entry in entries)
    assert len(dd.DOWNLOADS["multi30k"]) == 44 and len(dd.MIRROR["multi30k"]) == 44
    assert "multi30k/tok/train.lc.norm.tok.fr" in {e["path"] for e in entries}
    hashes = [e["sha256"] for e in entries if e["sha256"]]
    hashes += [sha for files in dd.MIRROR.values() for sha in files.values()]
    assert all(len(sha) == 64 and int(sha, 16) >= 0 for sha in hashes)
    # Only the Gigaword archive has no known sha256, and it is checked by size instead.
    assert [e["path"] for e in entries if e["sha256"] is None] == ["gigaword/summary.tar.gz"]


@pytest.mark.skipif(not MIRROR_DATA.is_dir(), reason="no local mirror of the data")
def test_the_real_mirror_matches_every_checksum_of_the_manifest(tmp_path, capsys):
    dd.main(["--mirror", str(MIRROR_DATA), "--dest", str(tmp_path)])
    for files in dd.MIRROR.values():
        for path, sha in files.items():
            assert dd.sha256_of(tmp_path / path) == sha
    assert not list(tmp_path.rglob("*.part"))
    capsys.readouterr()
    dd.main(["--dataset", "snli", "--mirror", str(MIRROR_DATA), "--dest", str(tmp_path)])
    assert "already present and verified" in capsys.readouterr().out
