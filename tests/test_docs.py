"""The documentation holds together: the API reference of regattn builds with pdoc
exactly as `make docs` builds it, without a warning; docs/design.md has every
numbered section that code, tests and docs point at; CITATION.cff has what a
citation needs."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

import regattn

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO / "docs" / "design.md"

# --------------------------------------------------------------- API reference (pdoc)


def makefile_variable(name):
    """The value of ``NAME := value`` in the Makefile, split like a shell would."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{name} := (.*)$", text, flags=re.M)
    assert match, f"the Makefile defines no {name}"
    return shlex.split(match.group(1))


def run_pdoc(modules, out):
    """pdoc with the Makefile's options into ``out``: (exit status, everything printed)."""
    assert importlib.util.find_spec("pdoc"), (
        "pdoc is not installed: it is in the test and docs extras; run `make install` "
        "(or .venv/bin/pip install -c constraints.txt -e '.[test]')"
    )
    command = [sys.executable, "-m", "pdoc", *makefile_variable("PDOC_OPTIONS"), "-o", str(out)]
    done = subprocess.run([*command, *modules], cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_api_reference_builds_without_warnings(tmp_path):
    modules = makefile_variable("PDOC_MODULES")
    assert modules == ["regattn"], "the reference documents the package regattn only"
    status, output = run_pdoc(modules, tmp_path)
    assert status == 0 and output == "", f"pdoc exited with {status} and printed:\n{output}"
    page = (tmp_path / "regattn.html").read_text()
    # Public submodules (regattn.losses, regattn.nn) get pages of their own.
    missing = [
        name
        for name in regattn.__all__
        if f'id="{name}"' not in page and not (tmp_path / "regattn" / f"{name}.html").is_file()
    ]
    assert not missing, f"regattn.html does not document {missing}"
    assert (tmp_path / "index.html").is_file()
    # Only the public package: the private modules and the fairseq user dir stay out.
    pages = sorted(path.name for path in tmp_path.rglob("*.html"))
    assert not [name for name in pages if name.startswith(("tasks", "regattn._"))], pages


def test_a_pdoc_warning_is_printed_so_the_build_fails(tmp_path):
    """The check above is not vacuous: pdoc exits 0 on a problem it can only warn
    about, and prints it, which is what `make docs` and the test above reject."""
    module = tmp_path / "broken_docs.py"
    module.write_text(
        '"""A module pdoc cannot fully document."""\n\n\n'
        'def f(x: "NoSuchName") -> None:\n    """Takes an unresolvable annotation."""\n'
    )
    status, output = run_pdoc([str(module)], tmp_path / "out")
    assert status == 0
    assert "NoSuchName" in output


# ----------------------------------------------------------------- docs/design.md

# "docs/design.md section 3", "docs/design.md, sections 4.3 and 5", across line breaks.
NUMBER = r"\d+(?:\.\d+)*"
REFERENCE = re.compile(
    rf"docs/design\.md,?\s+sections?\s+({NUMBER}(?:(?:\s*,\s*|\s+and\s+|\s*-\s*){NUMBER})*)"
)
HEADING = re.compile(rf"^(#{{2,4}}) ({NUMBER})\.? \S", flags=re.M)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cff", ".cfg", ".sh"}
SKIPPED_DIRS = {"build", "data-bin", "runs", "outputs", "multirun", "__pycache__", "node_modules"}


def design_sections():
    """The numbers of docs/design.md's numbered headings, in order."""
    return [number for _, number in HEADING.findall(NOTES.read_text())]


def text_files():
    """The repository's text files, outside hidden folders and generated outputs."""
    this_file = Path(__file__).resolve()  # its examples of the pattern are not references
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        ]
        for name in files:
            path = Path(root) / name
            if (path.suffix in TEXT_SUFFIXES or name == "Makefile") and path != this_file:
                yield path


def design_references():
    """{section number: [files that point at it]} over the repository."""
    references = {}
    for path in text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in REFERENCE.finditer(text):
            for number in re.findall(NUMBER, match.group(1)):
                references.setdefault(number, []).append(str(path.relative_to(REPO)))
    return references


def test_design_sections_are_numbered_in_order():
    numbers = design_sections()
    top = [n for n in numbers if "." not in n]
    assert top == [str(i) for i in range(1, len(top) + 1)], top
    for parent in top:
        subsections = [n for n in numbers if n.rsplit(".", 1)[0] == parent and "." in n]
        expected = [f"{parent}.{i}" for i in range(1, len(subsections) + 1)]
        assert subsections == expected, (parent, subsections)


def test_every_referenced_design_section_exists():
    references = design_references()
    # The contract and property tests point at their sections: the scan finds them.
    assert "tests/test_contracts.py" in sum(references.values(), [])
    assert "tests/test_properties.py" in sum(references.values(), [])
    sections = set(design_sections())
    missing = {n: files for n, files in references.items() if n not in sections}
    assert not missing, f"docs/design.md has no such section: {missing}"


def test_reference_pattern_reads_the_forms_in_use():
    text = "see docs/design.md section 3, and docs/design.md,\n    sections 4.3 and 5"
    found = [re.findall(NUMBER, m.group(1)) for m in REFERENCE.finditer(text)]
    assert found == [["3"], ["4.3", "5"]]


# --------------------------------------------------------------------- CITATION.cff


def test_citation_file_has_what_a_citation_needs():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "license", "preferred-citation"):
        assert citation.get(key), f"CITATION.cff has no {key}"
    assert citation["title"] == "regattn"
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, flags=re.M).group(1)
    assert citation["version"] == version, "CITATION.cff and pyproject.toml disagree"
    assert citation["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    paper = citation["preferred-citation"]
    assert paper["title"] == "A Regularized Framework for Sparse and Structured Neural Attention"
    assert [a["family-names"] for a in paper["authors"]] == ["Niculae", "Blondel"]
    assert paper["year"] == 2017
    assert "1705.07704" in paper["url"]
