"""Download the data sets of the reproduction, verified by sha256, into --dest.

    python scripts/download_data.py --dataset all                         # official sources
    python scripts/download_data.py --dataset all --mirror MIRROR_DIR   # a local copy

Official sources:
* snli: the SNLI 1.0 zip of the Stanford NLP site (CC BY-SA 4.0); its train/dev/test jsonl
  files are extracted to DEST/snli/.
* multi30k: Task 1 files of github.com/multi30k/dataset at a pinned commit: raw/*.gz (cased)
  and tok/* (lower-cased, tokenized; what prepare_data.py uses) to DEST/multi30k/{raw,tok}/.
* gigaword: the harvardnlp ``summary.tar.gz`` (Rush et al. 2015 data, hosted on Google
  Drive), extracted to DEST/gigaword/. Its sha256 is not known here (only its size), so
  it is checked by size and the script warns that the checksum is unverified.

--mirror DIR copies the files of a directory laid out like this script's output instead
(such as a copy holding the full Multi30k, SNLI dev/test + a 1 % train sample, a 10k/1k
Gigaword sample), to the same relative paths under DEST.

Every file is written to FILE.part first and renamed only after its checksum matched, so
FILE is either complete and verified or absent. An interrupted download keeps its .part
and is resumed (HTTP Range) by the next try or the next run. Only the standard library
downloads (urllib); tqdm shows progress.
"""

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

DATASETS = ("snli", "multi30k", "gigaword")
CHUNK = 1 << 16

SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
# The same sha256 is published by ParlAI and NLIDatasets.jl for this zip.
SNLI_SHA256 = "afb3d70a5af5d8de0d9d81e2637e0fb8c22d1235c2749d83125ca43dab0dbd3e"

# Pinned, so the files (and their checksums below) cannot change under us.
MULTI30K_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
MULTI30K_URL = f"https://raw.githubusercontent.com/multi30k/dataset/{MULTI30K_COMMIT}/data/task1"

# github.com/harvardnlp/sent-summary links summary.tar.gz on Google Drive, at
# https://drive.google.com/file/d/0B6N7tANPyVeBNmlSX19Ld2xDU1E/view; the usercontent address
# with confirm=t skips Drive's "cannot scan for viruses" page. If Drive still answers with
# a web page, the script says so: save the file by hand as DEST/gigaword/summary.tar.gz.
# Its size is from github.com/danieldeutsch/summarize; no published sha256 is known.
GIGAWORD_URL = (
    "https://drive.usercontent.google.com/download"
    "?id=0B6N7tANPyVeBNmlSX19Ld2xDU1E&export=download&confirm=t"
)
GIGAWORD_SIZE = 290866023

# Checksums of the Multi30k files, keyed "split.lang", from the multi30k/dataset repository's files
# (which lists the sha256 of every upstream file and of its gzip copy there).
# raw/{split}.{lang}.gz: the same bytes upstream and in the mirror.
MULTI30K_RAW_GZ = {
    "test_2016_flickr.cs": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "test_2017_mscoco.de": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.fr": "754f3072ba9f124569ba5258b32730fc1d214bbf8e0c6dfb2b74401676220db0",
    "test_2018_flickr.cs": "7d0a9db904f94c554a8c58049a9f3a5357c27f46cc3d710d70cb0b4a2585b8c2",
    "test_2018_flickr.de": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "test_2018_flickr.en": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "test_2018_flickr.fr": "fb2b83fcceb937a4f7e3e93c1c51c22aba92f1e342391e6b5ba392b16a920501",
    "train.cs": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}
# tok/{split}.lc.norm.tok.{lang}: the plain-text upstream file.
MULTI30K_TOK = {
    "test_2016_flickr.cs": "748c8816de928732365176e5c5d2f9bbabcec9b8d4448fba2d230feb057898a7",
    "test_2016_flickr.de": "c6a33d39d48f9f510de147651316cd9d918e09ad0219df734a2f16b6baccacc4",
    "test_2016_flickr.en": "5b7f32627cf99eced828311b955dae9800bb52bc8b91cf8b6526829e605b29d2",
    "test_2016_flickr.fr": "1463bd5960f9bfe098ec3cd752d3df0c49c84dc646fb518964a29232658cd836",
    "test_2017_flickr.de": "02067e4a9402786a4fcb8c1b6f4307e4a5073ced64800abead5273b54f5f31f6",
    "test_2017_flickr.en": "c9d1dfd7a26add989382e534af235af9f0f658b2a30e7eb0efdaf142496ee54f",
    "test_2017_flickr.fr": "c0583117a47b31e8a6c6a97cfe8de153e462074668f4e994764fcc80b21d33b4",
    "test_2017_mscoco.de": "e2825990b8a4e5289d2cdba801d57c187810bab9b4f5d87a30c35800a0d871b6",
    "test_2017_mscoco.en": "fe69ae004d71c42ead0301e70c57de5b1b6b5fb7f52210d42b22801e98e656f3",
    "test_2017_mscoco.fr": "0b6a4620f02b6b9acf7811fda23f90fed9c6baa0b96aa224db50a273078c84d1",
    "test_2018_flickr.cs": "09a4987a524dea4852ccfef35329281b2cd577780691b732341ccecc4015aa4c",
    "test_2018_flickr.de": "45ce6b121708adf538d3a8c71dc1acbcb1e0f2bca74ace8e58652f9ea5b96335",
    "test_2018_flickr.en": "a66e25cbb8323d74a40873dcd222659f39e30ee7687a6ed5445833aed0673239",
    "test_2018_flickr.fr": "22d44a4ba21e050f218399f2c4f9e1a36875f209820c1f1c9af5b76a2947a71c",
    "train.cs": "7645fb91efa18f94c83d493f740a5d5a941e4b01efa6a124bf2d4af040e133e0",
    "train.de": "cb5a23529b65ec2061f1dc446192a9c37382b63cc75f81a0be59d34894b3a505",
    "train.en": "08925f8e0572bcd5a006702fc5fe20e2d77c6917d4eebd576fc20de6693c2119",
    "train.fr": "8fa41bb718412bcb7c5dfa58603842810a01543eae86a51279f9886b901266e1",
    "val.cs": "b87ee4917f4a0f9ca6cca03e402026c9f4437dc1bd6a7dadfd2544ecfb6c5501",
    "val.de": "97232bd273eceb7207f689527386a97e4be2616b18ada47576bdaf96c8ae1f00",
    "val.en": "46573ce391ae227f1c72f873392436a20ef18e0a6d518098cfbd70b77c8572ec",
    "val.fr": "b303e301aa21fe7822a846b2b3fb2d5a1121ec807cd5b1d006fb7b2b5507168a",
}
# tok/{split}.lc.norm.tok.{lang}.gz: the mirror's gzip copy of it.
MULTI30K_TOK_GZ = {
    "test_2016_flickr.cs": "8e46fba6274766d8e55a0f6f28395d8948baab3cfeda729a7edaab8aa81a549d",
    "test_2016_flickr.de": "2628844bbb7783afa0ba8a9927f174aafeee715871aa8deed3af2c4d0b71a658",
    "test_2016_flickr.en": "b95df925929cb222d0cf733f153bcbfba0f00180c85fd61dd5c4fb27f29ee394",
    "test_2016_flickr.fr": "97b9b377d15dfc98e55e270dda3d6c91f8df02a5cf9e682457f6c59bd6be00db",
    "test_2017_flickr.de": "aa48934689a0fac1f506d19878ef9f48d823b2f1655bd3db5018f533cc0b2111",
    "test_2017_flickr.en": "6f015edf8eea8e5bff43d65e1743b2572577756b671a203651ccce508e787c35",
    "test_2017_flickr.fr": "d9905df4ff42d30afbf2affdfe4ebfc3700d3b468f56746e69c3a0f8a1d0ddc1",
    "test_2017_mscoco.de": "41d547d42224fd190b5ea169a18a840e9625bb7844d4255008e2400597275580",
    "test_2017_mscoco.en": "547d290e8b81097e8a307b1ef5b6ce7ff29fed52ae63a779a45bd4cc739f67c2",
    "test_2017_mscoco.fr": "32a29bc523f0d5446e792de90dec9f7874fdc14a917a783f8e9a1ab06f52abfd",
    "test_2018_flickr.cs": "7037cd1596c1f337c78297ecc9b2a2df297d00d5ec530a214254c071fdbe344e",
    "test_2018_flickr.de": "87b950eb1b484c97882d29e1ffceec68568d6a4b2bf72b1e7f9cdd62e3e37e90",
    "test_2018_flickr.en": "6942a488ee2f67a37c7a838ac456addc402a1ba61448c4da317b1bacc9b648eb",
    "test_2018_flickr.fr": "6f33d23fcc44cc3f7ec2b5058e0dcc0b0efc14de01082a37175488073f185eee",
    "train.cs": "aedf722ac75d9b899e9c373b1a2467b7d0af3c970327620162d50570fb1ec982",
    "train.de": "7e3392f03c0fe978165d22fb5eaf0d0b9b1d9c413283b5193f02d4cb27e50797",
    "train.en": "79d990dd71713faec0e3165cbd3b60acdf6fe11cab2e37a28f374c6bdbb297ec",
    "train.fr": "10438b7694a52af6164448c31198e9453b59a0d3b8a6715428722f0f8fbba2c0",
    "val.cs": "0a405dfbb948e4458978f2fc65058fcb885eec4ff3ff6a93aa23cf41fb4f23dd",
    "val.de": "006ad58fd6a2ad6502094160fe5273d93abf34a207967fdc69eafd7558b5ef39",
    "val.en": "2c7e5e9cf54ba0dff0cc4b84836d5a583f80ecaaab90b37a123d1376306215cd",
    "val.fr": "78b89a01ca96bb9940c525ad5eb73c0028d3e5bfd90008886a22961afb8e8994",
}


def tok_name(key):
    """The name of a Multi30k tok/ file: train.en -> train.lc.norm.tok.en."""
    split, lang = key.rsplit(".", 1)
    return f"{split}.lc.norm.tok.{lang}"


# What a download fetches. path: where the file goes under --dest (and its path under
# --base-url); extract: archive member -> path under --dest.
DOWNLOADS = {
    "snli": [
        {
            "path": "snli/snli_1.0.zip",
            "url": SNLI_URL,
            "sha256": SNLI_SHA256,
            "extract": {
                f"snli_1.0/snli_1.0_{split}.jsonl": f"snli/snli_1.0_{split}.jsonl"
                for split in ("train", "dev", "test")
            },
        }
    ],
    "multi30k": [
        {"path": f"multi30k/raw/{key}.gz", "url": f"{MULTI30K_URL}/raw/{key}.gz", "sha256": sha}
        for key, sha in MULTI30K_RAW_GZ.items()
    ]
    + [
        {
            "path": f"multi30k/tok/{tok_name(key)}",
            "url": f"{MULTI30K_URL}/tok/{tok_name(key)}",
            "sha256": sha,
        }
        for key, sha in MULTI30K_TOK.items()
    ],
    "gigaword": [
        {
            "path": "gigaword/summary.tar.gz",
            "url": GIGAWORD_URL,
            "sha256": None,
            "size": GIGAWORD_SIZE,
            "extract": {
                "sumdata/train/train.article.txt.gz": "gigaword/train.article.txt.gz",
                "sumdata/train/train.title.txt.gz": "gigaword/train.title.txt.gz",
                "sumdata/train/valid.article.filter.txt": "gigaword/valid.article.filter.txt",
                "sumdata/train/valid.title.filter.txt": "gigaword/valid.title.filter.txt",
                # The standard 1,951-pair Gigaword test set.
                "sumdata/Giga/input.txt": "gigaword/test.article.txt",
                "sumdata/Giga/task1_ref0.txt": "gigaword/test.title.txt",
            },
        }
    ],
}

# The mirror's other files: snli/{name}.jsonl.gz and gigaword_sample/{name}.txt.gz.
SNLI_GZ = {
    "snli_1.0_dev": "e5cfcc71b4846c40e06bae364a13312adeb434884e9a7cedf67037bdd212e39d",
    "snli_1.0_test": "ef5f0721f18e6aafd80f0d67aa2ef9784277aa08ba6a582c03fc381367282ac5",
    "snli_1.0_test_hard": "dc9814a951d38ab1fa85827864722e8d4a0565c437f2b4e97a1fb1cb44810f20",
    "snli_1.0_train_0.01": "434c14d5aca2241a7767d3e0b8c0098846656b9b91094bed71aab7304bb1e175",
}
GIGAWORD_SAMPLE_GZ = {
    "train.article": "cace2d30ccc20539d1ad3ab9cea3efcacee01fd932b70a2038bda0956090a74a",
    "train.title": "f17525d0f5e1ada6e6acb3408b01af268ad47328825d4d65c894969ce3de56a2",
    "valid.article.filter": "b28aae2e83abcc1585a6c84a982aecaf5ae6140f18cccae7005bbc74495e0223",
    "valid.title.filter": "683cbafed83066585a6d3d6bbd15c6263c3da5bd28cae9c86e00e4d1614411d3",
}

# What --mirror copies: path (the same under the mirror and under --dest) -> sha256.
MIRROR = {
    "snli": {f"snli/{name}.jsonl.gz": sha for name, sha in SNLI_GZ.items()},
    "multi30k": {
        **{f"multi30k/raw/{key}.gz": sha for key, sha in MULTI30K_RAW_GZ.items()},
        **{f"multi30k/tok/{tok_name(key)}.gz": sha for key, sha in MULTI30K_TOK_GZ.items()},
    },
    "gigaword": {f"gigaword_sample/{name}.txt.gz": sha for name, sha in GIGAWORD_SAMPLE_GZ.items()},
}


def sha256_of(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def verify(part, target, sha256, size=None):
    """Check a finished .part; on a mismatch delete it and stop with one clear line."""
    actual_size = part.stat().st_size
    actual = sha256_of(part)
    if size is not None and actual_size != size:
        part.unlink()
        raise SystemExit(
            f"error: size mismatch for {target}: expected {size} bytes, got {actual_size}; "
            "the partial file was deleted: run again to download it afresh"
        )
    if sha256 is None:
        print(
            f"warning: {target}: no published sha256 is known, so its checksum is NOT "
            f"verified (size only); its sha256 is {actual}"
        )
    elif actual != sha256:
        part.unlink()
        raise SystemExit(
            f"error: checksum mismatch for {target}: expected sha256 {sha256}, got {actual}; "
            "the partial file was deleted: run again to download it afresh, and if it "
            "fails again the source has changed (check the URL, --base-url or --mirror)"
        )


def is_done(target, sha256, size=None):
    """True if target is already in place and matches; stop if it exists but differs."""
    if not target.exists():
        return False
    if size is not None and target.stat().st_size != size:
        raise SystemExit(
            f"error: {target} exists but has {target.stat().st_size} bytes, expected {size}; "
            "delete it and run again"
        )
    if sha256 is not None and (actual := sha256_of(target)) != sha256:
        raise SystemExit(
            f"error: {target} exists but its sha256 is {actual}, expected {sha256}; "
            "delete it and run again"
        )
    print(f"{target}: already present{'' if sha256 is None else ' and verified'}")
    return True


def stream(url, part, target):
    """Append the bytes of url that part lacks to part (HTTP Range); raise OSError if cut."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "regattn-download_data"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return  # Nothing left to send: part is complete (the checksum decides).
        raise SystemExit(f"error: {url}: HTTP {error.code} {error.reason}") from None
    with response:
        # A login or confirmation page instead of the file (Google Drive does this).
        if response.headers.get_content_type() == "text/html":
            raise SystemExit(
                f"error: {url} sent an HTML page, not the file; download it in a browser "
                f"and save it as {target}, then run again"
            )
        if have and response.status != 206:
            have = 0  # The server ignored Range and sends the whole file: start over.
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as file,
            tqdm.wrapattr(file, "write", total=total, initial=have, desc=target.name) as out,
        ):
            shutil.copyfileobj(response, out, CHUNK)
    # http.client returns b"" rather than raising when a server closes a response early.
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def download(url, target, sha256, size=None, retries=3):
    """Download url to target through target.part, resuming after interruptions."""
    if is_done(target, sha256, size):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if part.exists():
        print(f"{target}: resuming from {part.stat().st_size} bytes in {part}")
    for attempt in range(retries + 1):
        try:
            stream(url, part, target)
            break
        except OSError as error:  # URLError, timeouts, resets, a cut connection
            if attempt == retries:
                kept = part.stat().st_size if part.exists() else 0
                raise SystemExit(
                    f"error: downloading {url} failed ({error}); {part} keeps the {kept} "
                    "bytes received: run the same command again to resume"
                ) from None
            print(f"warning: {target.name}: {error}; resuming (try {attempt + 2}/{retries + 1})")
    verify(part, target, sha256, size)
    os.replace(part, target)
    print(f"{target}: downloaded and {'size-checked' if sha256 is None else 'verified'}")


def copy_from_mirror(source, target, sha256):
    """Copy a mirror file to target through target.part, verified like a download."""
    if not source.is_file():
        raise SystemExit(
            f"error: mirror file missing: {source} (--mirror must be laid out like "
            "download_data.py's output)"
        )
    if is_done(target, sha256):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with (
        open(source, "rb") as src,
        open(part, "wb") as file,
        tqdm.wrapattr(file, "write", total=source.stat().st_size, desc=target.name) as out,
    ):
        shutil.copyfileobj(src, out, CHUNK)
    verify(part, target, sha256)
    os.replace(part, target)
    print(f"{target}: copied from {source} and verified")


def extract(archive, members, dest):
    """Extract archive members (name -> path under dest), each through a .part file."""
    is_zip = zipfile.is_zipfile(archive)
    with zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*") as opened:
        names = opened.namelist() if is_zip else opened.getnames()
        for member, relative in members.items():
            target = dest / relative
            if target.exists():
                continue  # Written from this verified archive by an earlier run.
            if member not in names:
                raise SystemExit(
                    f"error: {archive} has no member {member}; it has: {', '.join(names[:20])}"
                )
            part = target.with_name(target.name + ".part")
            size = opened.getinfo(member).file_size if is_zip else opened.getmember(member).size
            with (
                opened.open(member) if is_zip else opened.extractfile(member) as src,
                open(part, "wb") as file,
                tqdm.wrapattr(file, "write", total=size, desc=f"extract {target.name}") as out,
            ):
                shutil.copyfileobj(src, out, CHUNK)
            os.replace(part, target)
            print(f"{target}: extracted from {archive.name}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=(*DATASETS, "all"), default="all", help="default: all")
    parser.add_argument("--dest", type=Path, default=Path("data/raw"), help="default: data/raw")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--mirror",
        type=Path,
        help="copy from this directory, laid out like this script's output, instead of downloading",
    )
    source.add_argument(
        "--base-url",
        help="download every file from BASE_URL/<its path under --dest> instead of its "
        "official URL (an HTTP mirror; the tests use one)",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="resumes after an interruption (default 3)"
    )
    args = parser.parse_args(argv)
    if args.mirror is not None and not args.mirror.is_dir():
        parser.exit(2, f"error: --mirror directory not found: {args.mirror}\n")
    if args.retries < 0:
        parser.exit(2, f"error: --retries must be >= 0, got {args.retries}\n")
    return args


def main(argv=None):
    args = parse_args(argv)
    for dataset in DATASETS if args.dataset == "all" else (args.dataset,):
        if args.mirror is not None:
            paths = list(MIRROR[dataset])
            for path, sha256 in MIRROR[dataset].items():
                copy_from_mirror(args.mirror / path, args.dest / path, sha256)
        else:
            paths = [entry["path"] for entry in DOWNLOADS[dataset]]
            for entry in DOWNLOADS[dataset]:
                url = entry["url"]
                if args.base_url:
                    url = f"{args.base_url.rstrip('/')}/{entry['path']}"
                target = args.dest / entry["path"]
                download(url, target, entry["sha256"], entry.get("size"), args.retries)
                if "extract" in entry:
                    extract(target, entry["extract"], args.dest)
        # Each data set has one folder under --dest.
        print(f"{dataset}: done, files in {args.dest / Path(paths[0]).parts[0]}")


if __name__ == "__main__":
    sys.exit(main())
