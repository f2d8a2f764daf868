"""The promise every bad-input case checks: one clear line naming the file or option, a
non-zero exit, no traceback, nothing left behind.

Used by the ``tests/test_bad_inputs_*.py`` corpus: each case runs a real command line through
:func:`slidewatch.cli.main.main` (in process, stderr captured by pytest's ``capsys``).
"""

from __future__ import annotations

from pathlib import Path

from slidewatch.cli.main import main


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``roots`` (files with their bytes), to compare after a run."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for p in sorted([root, *root.rglob("*")]):
            out[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def run_bad(capsys, argv: list, needle: str, *, watch: tuple = (), code: int | None = 2,
            progress_lines: bool = False) -> str:
    """Run ``argv``; assert a non-zero exit (``code`` when given), exactly one line on stderr
    starting with ``error:`` and containing ``needle``, no traceback, and that nothing under
    the ``watch`` folders changed (no file created, removed or rewritten). Returns the line.

    ``progress_lines``: the command logs its progress (``train``) before the failure; then the
    error must be the last line and the only one starting with ``error:``."""
    before = snapshot(*watch)
    capsys.readouterr()
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got != 0, f"exit 0 for {argv}: {err}"
    if code is not None:
        assert got == code, f"exit {got} (expected {code}) for {argv}: {err}"
    assert "Traceback" not in err, err
    if progress_lines:
        assert sum(line.startswith("error:") for line in lines) == 1, err
        lines = lines[-1:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("error:"), lines[0]
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    after = snapshot(*watch)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before)) or 'contents'}"
    return lines[0]
