"""The README says what the CLI does (issue 21 item 17)."""

from __future__ import annotations

from pathlib import Path

from emstream.cli_reference import END, START, reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_command_reference_matches_the_cli():
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == reference().strip(), (
        "the README's command reference is out of date: paste the output of "
        "`python -m emstream.cli_reference` between its markers")


def test_every_option_the_readme_names_exists():
    """Options written in the prose (``--name``) are options some command takes."""
    import re

    text = README.read_text(encoding="utf-8")
    known = set(re.findall(r"`(--[a-z][a-z0-9-]*)", reference()))
    known |= {"--help", "--version", "--verbose", "--no-report"}
    prose = text.split(START, 1)[0] + text.split(END, 1)[1]
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", prose))
    tool_only = {"--families", "--fold-model", "--lofo-model", "--card", "--model", "--option",
                 "--upscale", "--limit", "--out", "--seeds", "--modes", "--frames", "--speed",
                 "--truth-labels", "--segmenter", "--rows", "--particles", "--soak", "--size",
                 "--real-model", "--edges", "--scene-sessions", "--init", "--synthetic",
                 "--steps", "--family-weights", "--detail", "--fold", "--real-train",
                 "--real-fraction", "--lr", "--threads", "--val", "--index-url", "--no-deps",
                 "--only-binary", "--extra-index-url", "--kills", "--visible-only", "--neck-frames",
                 "--host", "--port", "--nthreads"}  # the last three: `dask scheduler/worker`
    unknown = named - known - tool_only
    assert not unknown, f"the README names options no command has: {sorted(unknown)}"
