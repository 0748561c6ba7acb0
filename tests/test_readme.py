"""The README's operator example runs as written and prints what it says."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_and_print_what_the_comments_say():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, str(README), "exec"), {})
        # Lines like `print(...)  # expected` and `# expected` after a print.
        expected = re.findall(r"print\(.*\)[ \t]+# (.+)", block)
        expected += re.findall(r"^# (\[.*\])$", block, flags=re.M)
        output = printed.getvalue()
        for text in expected:
            assert text in output, f"README promises {text!r}, the code printed {output!r}"
