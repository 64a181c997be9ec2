"""Error text made safe to show a visitor: no file-system paths, no user names.

A message such as "No such file: /home/alice/.cache/glassbox/model.safetensors" tells a
stranger the server's layout and its user's name. scrub() keeps what helps (the file's own
name) and drops the rest: "No such file: …/model.safetensors". The full text goes to the log.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path

# an absolute POSIX path ("/a/b/c", "~/a/b") or a Windows one ("C:\\a\\b"), up to a space or quote
_PATH = re.compile(r"(?<![\w/.:-])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"()\[\],;:]+){2,}[/\\]?")


def _user_names() -> set[str]:
    names = {Path.home().name}
    try:
        names.add(getpass.getuser())
    except Exception:  # noqa: BLE001 - no user name to hide
        pass
    return {n for n in names if len(n) >= 3 and n not in ("root", "app", "home")}


def scrub(text: str) -> str:
    """The text with every absolute path cut to its last part and the server's user name hidden."""

    def last_part(match: re.Match[str]) -> str:
        parts = [p for p in re.split(r"[/\\]", match.group(0)) if p]
        return f"…/{parts[-1]}" if parts else "…"

    out = _PATH.sub(last_part, text)
    for name in _user_names():
        out = re.sub(rf"\b{re.escape(name)}\b", "…", out)
    return out
