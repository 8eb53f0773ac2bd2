"""Mermaid's own parser (the npm package, run by node) for the tests, when it is installed:
``scripts/setup --test`` installs it into ``mermaid_parser/node_modules`` when npm is there."""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
from pathlib import Path

PARSER_DIR = Path(__file__).resolve().parent / "mermaid_parser"
_ENTITY = re.compile(r"ﬂ°°(\d+)¶ß")  # how Mermaid holds an entity code (#NNN;) between parsing and drawing


def available() -> bool:
    return shutil.which("node") is not None and (PARSER_DIR / "node_modules" / "mermaid").is_dir()


def shown(text: str) -> str:
    """A parsed label as Mermaid will draw it: entity codes turned into their characters."""
    return _ENTITY.sub(lambda m: chr(int(m.group(1))), text)


class MermaidParser:
    """One node process answering a diagram per line, so a Hypothesis run costs one start."""

    def __init__(self):
        self.proc = subprocess.Popen(["node", "parse.mjs"], cwd=PARSER_DIR, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buffer = b""

    def parse(self, text: str, timeout: float = 60.0) -> dict:
        self.proc.stdin.write((json.dumps(text) + "\n").encode())
        self.proc.stdin.flush()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError(f"mermaid's parser gave no answer in {timeout} s")
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                raise EOFError("mermaid's parser exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
