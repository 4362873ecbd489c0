"""The CLI's allocator settings: a large array freed and allocated again reuses the memory
instead of taking fresh pages from the kernel (which zeroes each one first)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Page faults taken by allocating and filling a 24 MB array right after freeing one.
_FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "kept":
    from changedet.memory import keep_freed_memory
    assert keep_freed_memory()
a = np.ones(6 << 20, dtype=np.float32)
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(6 << 20, dtype=np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_freed_memory_is_reused_without_new_pages() -> None:
    default, kept = _faults("default"), _faults("kept")
    # 24 MB of fresh pages: at least 12 faults of 2 MB huge pages, 6144 of 4 kB pages.
    assert default >= 12
    assert kept <= 2, (default, kept)


def test_the_cli_applies_the_settings() -> None:
    code = (
        "import numpy as np, sys\n"
        "from click.testing import CliRunner\n"
        "from changedet.cli import main\n"
        "CliRunner().invoke(main, ['run', '--help'])\n"
        "print(np._core.multiarray._get_madvise_hugepage())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = "False" if sys.platform.startswith("linux") else "True"
    assert done.stdout.strip().splitlines()[-1] == expected
