"""A newcomer's first hour (issue 15, acceptance 4): `make demo`, then README's next three
commands, as written, against the running demo."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """The commands README gives right after `make demo`."""
    text = README.read_text()
    after = text[text.index("make demo    # terminal 1"):]
    return [line for line in after.splitlines() if line.startswith(".venv/bin/iris ")][:3]


def test_make_demo_is_the_demo_that_writes_its_config() -> None:
    assert "\t$(BIN)/iris demo --write-config demo-config\n" in (ROOT / "Makefile").read_text()


def test_readme_commands_work_against_the_demo(tmp_path: Path) -> None:
    bin_dir = tmp_path / ".venv" / "bin"  # README's paths, from a fresh folder: the
    bin_dir.mkdir(parents=True)  # `iris` installed beside the Python running the tests
    (bin_dir / "iris").symlink_to(Path(sys.executable).parent / "iris")
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == ["status", "send", "dlq"], commands
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen([sys.executable, "-m", "iris", "demo", "--write-config",
                             "demo-config"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        config = tmp_path / "demo-config" / "iris.yaml"
        deadline = time.monotonic() + 30
        while b"Ctrl-C stops everything" not in (tmp_path / "demo.log").read_bytes():
            assert demo.poll() is None and time.monotonic() < deadline, (
                tmp_path / "demo.log").read_text()
            time.sleep(0.1)
        assert config.is_file()
        results = [subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True,
                                  text=True, timeout=60) for command in commands]
        for command, result in zip(commands, results, strict=True):
            assert result.returncode == 0, (command, result.stdout, result.stderr)
        status, send, dlq = results
        assert "iris:events: length" in status.stdout and "consumer demo" in status.stdout
        assert send.stdout.startswith("sent 1 event(s) to iris:events: ")
        assert dlq.stderr.strip().endswith("dead letter(s)")
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(30)
        log.close()
    assert code == 0
    assert "stopped cleanly" in (tmp_path / "demo.log").read_text()
