"""The README is a user guide whose commands are true: every ``napari-boundary-seg``
command in its code blocks parses (no work is done), the CPU example is there and
marked, and the text keeps to a user guide (no lab notes, no internal issue numbers).

The CPU example's wall time is measured by ``benchmarks/readme_cpu_example.py``
(minutes; not part of the test suite)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from napari_boundary_seg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROG = "napari-boundary-seg"


def code_blocks(text: str = README) -> list[str]:
    return re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)


def cli_commands(text: str = README) -> list[list[str]]:
    """Every ``napari-boundary-seg`` invocation in the shell code blocks, as argv
    lists without the program (also inside ``a && b`` chains and after ``.venv/bin/``)."""
    return [argv for block in code_blocks(text) for argv in block_commands(block)]


def block_commands(block: str) -> list[list[str]]:
    """The ``napari-boundary-seg`` invocations of one code block."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word in ("&&", "||", ";", "|"):
                if command and command[0].rsplit("/", 1)[-1] == PROG:
                    found.append(command[1:])
                command = []
            else:
                command.append(word)
    return found


def test_the_readme_has_commands_to_check():
    commands = cli_commands()
    assert len(commands) >= 10
    assert {c[0] for c in commands} >= {"demo", "synth", "train", "predict", "evaluate"}


@pytest.mark.parametrize("argv", cli_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    """Parsed by the command line's own parser (what ``--help`` would describe); a
    wrong option or value exits with status 2 here."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # pragma: no cover - the failure itself
        pytest.fail(f"`{PROG} {shlex.join(argv)}` does not parse (exit {stop.code})")
    assert callable(args.func)


def test_first_block_is_the_main_job_and_the_venv_is_active():
    first = code_blocks()[0].strip()
    assert first.endswith(f"{PROG} demo") and "source .venv/bin/activate" in first
    assert "source .venv/bin/activate" in code_blocks()[2]  # the Install section


def test_install_lines_for_cpu_and_cuda():
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in README
    assert re.search(r"^pip install torch==2\.13\.0 +# CUDA build", README, flags=re.M)


def test_cpu_example_is_marked_with_the_gpu_example_beside_it():
    blocks = code_blocks()
    cpu = [b for b in blocks if b.startswith("# CPU example")]
    gpu = [b for b in blocks if b.startswith("# GPU example")]
    assert len(cpu) == 1 and len(gpu) == 1
    train = [c for c in block_commands(cpu[0]) if c[0] == "train"]
    assert train and "--preset" not in train[0]  # the default on a CPU: quick
    assert any("--preset" in c and "paper" in c for c in block_commands(gpu[0]))
    # evaluated on held-out cases, not on the training folder
    evaluate = next(c for c in block_commands(cpu[0]) if c[0] == "evaluate")
    assert "data/test/labelsTr" in evaluate


def test_a_user_guide_not_a_lab_notebook():
    lines = README.splitlines()
    assert 150 <= len(lines) <= 320, len(lines)
    assert not re.search(r"\bissue\s+#?\d+", README, flags=re.I)
    assert not re.search(r"\b(I|my|mine|I've|I'm)\b", README)
    assert "## Real scans" in README
    for page in ("docs/STUDY.md", "docs/BENCHMARKS.md", "docs/TRAINING.md", "docs/METHOD.md"):
        assert f"({page}" in README and (ROOT / page).is_file(), page


def test_links_to_files_exist():
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_python_blocks_compile_and_import_what_exists():
    import importlib

    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")
        for module, names in re.findall(r"^from (\S+) import (.+)$", block, flags=re.M):
            imported = importlib.import_module(module)
            for name in names.split(","):
                assert hasattr(imported, name.strip()), (module, name)


def test_the_boundary_loss_answer_is_the_regimes_maps_own_words():
    """README "When does the boundary loss help?" quotes the answer that
    ``study/regimes.py`` words from the statistics (``regimes.md``), line by line,
    and shows both figures of the map."""
    regimes = ROOT / "benchmarks" / "results" / "boundary_regimes" / "regimes.md"
    answer = [
        line for line in regimes.read_text().split("\n## ")[0].splitlines() if line.startswith("- ")
    ]
    section = README.split("## When does the boundary loss help?", 1)[1].split("\n## ", 1)[0]
    assert answer, "regimes.md has no answer"
    for line in answer:
        assert line in section, line
    for figure in ("regimes_delta.png", "basin_curves.png"):
        assert f"benchmarks/results/boundary_regimes/{figure}" in section
    # the φ-units / peer part and the 3x-budget part: their answers, word for word
    for part in ("phi_peer", "budget_3x"):
        text = (regimes.parent / part / "regimes.md").read_text().split("\n## ")[0]
        lines = [line[2:].strip() for line in text.splitlines() if line.startswith(("- ", "  "))]
        assert lines and "PARTIAL" not in text, part
        for line in lines:
            assert line in section, (part, line)
    assert "PARTIAL" not in regimes.read_text()
