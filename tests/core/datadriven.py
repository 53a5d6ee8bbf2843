"""Table-driven tests in the style of etcd's ``testdata/*.txt`` (cockroachdb/datadriven).

A file is a sequence of cases::

    # a comment
    command arg=value word
    ----
    expected output
    (up to the next blank line)

Each command is run by the test's handler, which returns its output as text; the test fails
on the first case whose output differs. ``REWRITE=1 pytest tests/core`` writes the actual
outputs back into the files instead, to be reviewed with ``git diff``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TESTDATA = Path(__file__).parent / "testdata"


@dataclass
class Case:
    line: int  # 1-based line of the command, for failure messages
    command: str
    words: list[str] = field(default_factory=list)  # positional arguments
    args: dict[str, str] = field(default_factory=dict)  # key=value arguments
    expected: str = ""

    def arg(self, name: str, default: str | None = None) -> str:
        if name not in self.args:
            if default is None:
                raise KeyError(f"line {self.line}: {self.command} needs {name}=")
            return default
        return self.args[name]

    def ms(self, name: str = "at") -> float:
        """A time argument given in milliseconds, as seconds."""
        return float(self.arg(name)) / 1000


def parse(text: str) -> list[Case]:
    cases, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
            i += 1
            continue
        command, *rest = line.split()
        case = Case(i + 1, command)
        for token in rest:
            key, sep, value = token.partition("=")
            if sep:
                case.args[key] = value
            else:
                case.words.append(token)
        if i + 1 >= len(lines) or lines[i + 1].strip() != "----":
            raise ValueError(f"line {i + 2}: expected ---- after the command")
        i += 2
        output = []
        while i < len(lines) and lines[i].strip():
            output.append(lines[i].rstrip())
            i += 1
        case.expected = "\n".join(output)
        cases.append(case)
    return cases


def render(cases: list[Case], outputs: list[str], text: str) -> str:
    """The file with every case's output replaced by ``outputs``, comments kept."""
    lines, result, i, n = text.split("\n"), [], 0, 0
    while i < len(lines):
        if n < len(cases) and i + 1 == cases[n].line:
            result += [lines[i], "----"]
            result += [line for line in outputs[n].split("\n") if line.strip()]
            i += 2
            while i < len(lines) and lines[i].strip():
                i += 1
            n += 1
            continue
        result.append(lines[i])
        i += 1
    return "\n".join(result)


def run_file(path: Path, handler: Callable[[Case], str]) -> None:
    text = path.read_text()
    cases = parse(text)
    outputs = []
    for case in cases:
        actual = handler(case).strip()
        outputs.append(actual)
        if not os.environ.get("REWRITE"):
            assert actual == case.expected, (
                f"{path.name}:{case.line}: {case.command} {' '.join(case.words)} "
                f"{' '.join(f'{k}={v}' for k, v in case.args.items())}\n"
                f"--- expected\n{case.expected}\n--- actual\n{actual}")
    if os.environ.get("REWRITE"):
        path.write_text(render(cases, outputs, text))


def files(prefix: str) -> list[Path]:
    return sorted(TESTDATA.glob(f"{prefix}*.txt"))
