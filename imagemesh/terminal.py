"""What the CLI writes, and where: exact lines for programs, styled text only for people.

stdout carries a command's answer. Unless stdout is a terminal, nothing written there passes
through rich: a JSON line is `json.dumps` of one object, a plain line is written as it is, and a
table becomes tab-separated lines with a header. So no line is wrapped at 80 columns, no value is
truncated, and nothing is styled. On a terminal, tables are drawn by rich, with the columns that
must be copied whole (key ids) never truncated or folded.

stderr carries progress and messages for people. Text that comes from the server (provider
names, filenames, error messages, holder names) is only ever added as plain `rich.text.Text`,
never parsed as markup or emoji codes: `[/bold]` prints as itself instead of raising a
MarkupError, `[red]m.png` is not swallowed, `:fox:` stays three words. Control characters in
server text are shown escaped, so a message cannot move the cursor or spill onto a second line.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from imagemesh.v1 import imagemesh_pb2 as pb


def plain(value: Any) -> str:
    """`value` as text on one line: control characters (newlines, escapes) shown as `\\xNN`."""
    text = str(value)
    if not any(unicodedata.category(c) == "Cc" for c in text):
        return text
    return "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready data with the proto's snake_case field names (the names
    the README uses), every field present even when it holds its default."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class Terminal:
    """The CLI's two channels. Writes flush at once: `watch` output is followed live.

    The streams default to `sys.stdout` / `sys.stderr` as they are when first used, not when
    this object is made (a module-level Terminal works under redirection)."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._stdout = stdout
        self._stderr = stderr
        self._people: Console | None = None
        self._screen: Console | None = None

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    @property
    def people(self) -> Console:
        """The stderr console. soft_wrap: a long message stays one line in a log file;
        markup and emoji off: strings are never interpreted, whoever wrote them."""
        if self._people is None:
            self._people = Console(file=self.stderr, soft_wrap=True, markup=False, emoji=False, highlight=False)
        return self._people

    def _screen_console(self) -> Console | None:
        """A console for stdout only when stdout is a terminal."""
        if not _isatty(self.stdout):
            return None
        if self._screen is None:
            self._screen = Console(file=self.stdout, markup=False, emoji=False, highlight=False)
        return self._screen

    @property
    def stderr_is_terminal(self) -> bool:
        """Whether stderr is a terminal (a progress bar makes sense)."""
        return _isatty(self.stderr)

    # -- stdout: the answer ----------------------------------------------------------------------
    def json(self, value: dict[str, Any] | list[Any] | Message) -> None:
        """One exact JSON line (a protobuf message with snake_case names)."""
        if isinstance(value, Message):
            value = message_dict(value)
        self._write(json.dumps(value, separators=(",", ":")) + "\n")

    def line(self, text: str) -> None:
        """One plain line, as it is."""
        self._write(plain(text) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], *, whole: Sequence[str] = ()) -> None:
        """Rows for people on a terminal; tab-separated lines with a header everywhere else.
        Columns named in `whole` are never truncated or folded (ids that are copied)."""
        rows = [[plain(cell) for cell in row] for row in rows]
        screen = self._screen_console()
        if screen is None:
            for row in [list(headers), *rows]:
                self._write("\t".join(cell.replace("\t", " ") for cell in row) + "\n")
            return
        table = Table()
        for n, header in enumerate(headers):
            if header in whole:
                widest = max([len(header), *(len(row[n]) for row in rows)])
                table.add_column(header, no_wrap=True, min_width=widest)
            else:
                table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        screen.print(table)

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    # -- stderr: for people ----------------------------------------------------------------------
    def say(self, text: Text | str) -> None:
        self.people.print(text if isinstance(text, Text) else Text(plain(text)))

    def fail(self, text: str) -> None:
        """One line saying why the command stopped."""
        self.people.print(Text.assemble(("imagemesh: ", "bold red"), plain(" ".join(str(text).split()))))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- the words for batch events ------------------------------------------------------------------
def result_text(r: pb.TaskResult) -> Text:
    """`✓ #0 fox.png (local, local-renderer, 12 ms)` or `✗ #3 FAILED INVALID_INPUT: ...`."""
    if r.state == pb.SUCCEEDED:
        how = ", ".join(plain(x) for x in (r.provider, r.model) if x)
        return Text.assemble(("✓", "green"), f" #{r.task_index} ", ", ".join(plain(f.filename) for f in r.files),
                             (f" ({how + ', ' if how else ''}{r.timings.total_ms} ms)", "dim"))
    return Text.assemble(("✗", "red"), f" #{r.task_index} {pb.TaskState.Name(r.state)} ",
                         plain(r.error.code), ": ", plain(r.error.message))


def summary_text(batch_id: str, s: pb.BatchSummary) -> Text:
    return Text.assemble((f"batch {plain(batch_id)}", "bold"),
                         f": {s.succeeded} succeeded, {s.failed} failed, {s.cancelled} cancelled "
                         f"in {s.duration_ms / 1000:.2f}s")


def event_line(event: pb.BatchEvent) -> str:
    """One plain line per event, for `watch` without --json."""
    kind = event.WhichOneof("event")
    if kind == "result":
        r = event.result
        what = (", ".join(f.filename for f in r.files) if r.state == pb.SUCCEEDED
                else f"{r.error.code}: {r.error.message}")
        return plain(f"{event.cursor} result #{r.task_index} {pb.TaskState.Name(r.state)} {what}")
    if kind == "summary":
        s = event.summary
        return f"{event.cursor} summary {s.succeeded} succeeded, {s.failed} failed, {s.cancelled} cancelled"
    if kind == "accepted":
        return f"{event.cursor} accepted {len(event.accepted.task_ids)} tasks"
    return plain(f"{event.cursor} {kind}")
