"""Figure files named in results.json, embedded into the report only when they are safe to embed.

A results.json is data anyone can edit, and the report embeds file bytes as base64, so a path in it
must never become a way to read other files (issue 9: a crafted results.json embedded /etc/passwd).
Rules, applied to every path:

- it is resolved against the results folder (a relative path) and symlinks are followed; the real
  file must lie inside the results folder. Absolute paths elsewhere, ``..`` escapes and symlinks that
  point out of the folder are refused;
- a path that is not inside the folder but whose file *name* is (a results folder copied or moved
  elsewhere, or a results.json written with paths relative to the eval's working directory) is
  looked up by that name inside the folder, under the same rules;
- the file must be a regular file of at most :data:`MAX_FIGURE_BYTES` that starts with the PNG
  signature; anything else is refused.

A refused or missing figure becomes a note in its section and in a box at the top of the page, and
each refusal is printed once on stderr.
"""
from __future__ import annotations

import base64
import os
import stat
import sys
from pathlib import Path
from typing import Any, Mapping

from .markup import esc, flatten

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_FIGURE_BYTES = 20 * 1024 * 1024  # the suite's figures are < 1 MB; a larger "figure" is not one of them
# Keys whose PNG value is a figure file (a manifest row id such as "images/x.png" under "image" or "id" is not).
_FIGURE_KEY_WORDS = ("path", "plot", "fig", "png", "overlay", "file", "best", "median", "worst", "heatmap", "map")


class Refused(Exception):
    """A figure path that must not be embedded; the message says why."""


class Assets:
    """Embeds PNG files named in the results; remembers what it could not find and what it refused."""

    def __init__(self, base_dir: str | Path | None, warn=None):
        self.base = Path(base_dir).resolve() if base_dir is not None else None
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self._warn = warn if warn is not None else (lambda msg: print(msg, file=sys.stderr))

    def _inside(self, p: Path) -> Path | None:
        """``p`` with symlinks resolved if it exists inside the results folder; None if it does not exist."""
        real = p.resolve()
        if real != self.base and self.base not in real.parents:
            raise Refused(f"resolves to {real}, outside the results folder {self.base}")
        return real if os.path.lexists(real) else None

    def resolve(self, path: str) -> Path | None:
        """The real file inside the results folder for ``path``; None if it is not there; Refused if unsafe."""
        if self.base is None:
            raise Refused("no results folder to read figures from")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise Refused("not a file path")
        given = Path(path)
        candidate = given if given.is_absolute() else self.base / given
        try:
            found, outside = self._inside(candidate), None
        except Refused as why:
            found, outside = None, why
        if found is not None:
            return found
        # a moved results folder, or paths relative to the eval's working directory: the same file
        # name directly inside this folder (never a sub-path, so no `..` can ride along)
        name = given.name
        if name in ("", ".", "..") or not os.path.lexists(self.base / name):
            if outside is not None:
                raise outside
            return None
        return self._inside(self.base / name)

    def read_png(self, real: Path) -> bytes:
        """The bytes of ``real`` if it is a regular file holding a PNG (symlinks are not followed here)."""
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open file, not the name,
        # so what is checked is what is read
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused("not a regular file")
            if st.st_size > MAX_FIGURE_BYTES:
                raise Refused(f"{st.st_size} bytes; a figure is at most {MAX_FIGURE_BYTES}")
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(MAX_FIGURE_BYTES + 1)
        finally:
            os.close(fd)
        if not data.startswith(PNG_SIGNATURE):
            raise Refused("not a PNG file (the content does not start with the PNG signature)")
        return data

    def img(self, path: Any, alt: str, cls: str = "fig") -> str:
        """An <img> with the file's PNG inlined, or a note saying why it is left out."""
        self.used.add(str(path))
        try:
            real = self.resolve(path)
            if real is None:
                self.missing.append(str(path))
                return f'<p class="note">figure not found: {esc(path)} (the file was moved or deleted)</p>'
            data = self.read_png(real)
        except Refused as why:
            self.refused.append((str(path), str(why)))
            self._warn(f"cxrfm report: figure refused: {path!r}: {why}; only PNG files inside the results "
                       f"folder are embedded")
            return f'<p class="note">figure refused: {esc(path)} ({esc(why)})</p>'
        except OSError as err:
            self.missing.append(str(path))
            return f'<p class="note">figure unreadable: {esc(path)} ({esc(err)})</p>'
        b64 = base64.b64encode(data).decode("ascii")
        return f'<img class="{esc(cls)}" alt="{esc(alt)}" src="data:image/png;base64,{b64}">'

    def problems_box(self) -> str:
        """A box for the top of the page listing figures left out (missing or refused), or ''."""
        out = ""
        if self.missing:
            out += ('<div class="warn">Some figures named in the results were not found and are left out: '
                    + ", ".join(esc(m) for m in self.missing) + "</div>")
        if self.refused:
            out += ('<div class="danger"><b>Figures refused:</b> only PNG files inside the results folder are '
                    "embedded.<ul>" + "".join(f"<li>{esc(p)}: {esc(w)}</li>" for p, w in self.refused)
                    + "</ul></div>")
        return out


def png_paths(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every string ending in .png under a figure-like key."""
    return [(k, v) for k, v in flatten(obj, prefix) if isinstance(v, str) and v.lower().endswith(".png")
            and any(w in k.rsplit(".", 1)[-1].lower() for w in _FIGURE_KEY_WORDS)]


def leftover_figures(result: Mapping, assets: Assets) -> str:
    """Figures the task saved that its section did not show."""
    left = [(k, v) for k, v in png_paths(result) if v not in assets.used]
    if not left:
        return ""
    return "<h3>Figures saved by the task</h3>" + "".join(
        f"<figure>{assets.img(v, k)}<figcaption>{esc(k)}</figcaption></figure>" for k, v in left)
