"""gin parsing with errors a person can act on.

Plugins are loaded first (gin does not scan entry points). Every ``@kind.name`` reference is
checked against the registry before gin sees it, so a typo is reported with its file, line
and the close matches; gin's own errors are re-raised naming the file and line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import gin

from precondlab import registry
from precondlab.errors import UserInputError

REF = re.compile(r"@([A-Za-z_][\w.]*)")


class ConfigError(UserInputError, ValueError):
    """A gin file or binding that cannot be used; the message names file and line."""


@dataclass
class ParsedConfig:
    files: list[str]
    bindings: list[str]
    text: str                      # the files' text with includes inlined, then the bindings
    search_paths: list[str] = field(default_factory=list)


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def _known_configurables() -> set[str]:
    from gin import config as gin_config
    names = set()
    for key, _ in gin_config._REGISTRY.items():  # noqa: SLF001 - gin exposes no public listing
        names.add(key)
        names.add(key.split(".")[-1])
    return names


def check_references(text: str, origin: str) -> None:
    """Every @kind.name must be registered; report file, line and close matches otherwise."""
    known = _known_configurables()
    for lineno, raw in enumerate(text.splitlines(), 1):
        for ref in REF.findall(_strip_comment(raw)):
            if ref in known or ref.startswith("gin.") or ref.startswith("%"):
                continue
            kind, _, name = ref.partition(".")
            if name and kind in registry.KINDS:
                broken = registry.failure(kind, name)
                if broken is not None:
                    raise ConfigError(f"{origin}, line {lineno}: {broken}")
                close = registry.suggest(kind, name)
                hint = f" Did you mean: {', '.join('@' + kind + '.' + c for c in close)}?" if close else ""
                raise ConfigError(f"{origin}, line {lineno}: unknown {kind} {name!r} in {raw.strip()!r}.{hint} "
                                  f"(`precondlab list {kind}` shows them all)")
            close = difflib.get_close_matches(ref, sorted(known), n=3)
            hint = f" Did you mean: {', '.join('@' + c for c in close)}?" if close else ""
            raise ConfigError(f"{origin}, line {lineno}: unknown configurable @{ref}.{hint}")


def _inline(path: Path, search: list[Path], seen: tuple = ()) -> str:
    """The file's text with its includes resolved (for reference checks and for Ray trials)."""
    if path in seen:
        raise ConfigError(f"{path}: include cycle through {' -> '.join(map(str, seen))}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read gin file {path}: {exc.strerror}") from None
    check_references(text, str(path))
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*include\s+['\"]([^'\"]+)['\"]", line)
        if not m:
            out.append(line)
            continue
        target = _find(m.group(1), [path.parent] + search)
        if target is None:
            raise ConfigError(f"{path}, line {lineno}: included file {m.group(1)!r} not found "
                              f"(looked in {', '.join(str(p) for p in [path.parent] + search)})")
        out.append(f"# --- begin include {m.group(1)}")
        out.append(_inline(target, search, seen + (path,)))
        out.append(f"# --- end include {m.group(1)}")
    return "\n".join(out)


def _find(name: str, search: list[Path]) -> Path | None:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    for base in search:
        if (base / name).exists():
            return (base / name).resolve()
    return None


def _rewrite_gin_error(exc: Exception, origin: str) -> ConfigError:
    msg = str(exc).strip() or repr(exc)
    if exc.args and isinstance(exc.args[0], str) and exc.args[0].startswith("EOF in multi-line"):
        msg = "the file ends inside a bracket or string: an opening (, [, { or quote is never closed"
    m = re.search(r"No configurable matching '([^']+)'", msg)
    if m:
        close = difflib.get_close_matches(m.group(1), sorted(_known_configurables()), n=3)
        if close:
            msg += f"\nDid you mean: {', '.join(close)}?"
    return ConfigError(f"{origin}: {msg}")


def load(files: list[str], bindings: list[str] | None = None, search_paths: list[str] | None = None) -> ParsedConfig:
    """Parse gin files and bindings into gin's global state; returns the inlined text."""
    registry.load_plugins()
    bindings = list(bindings or [])
    search = [Path(p).resolve() for p in (search_paths or [])]
    chunks = []
    for f in files:
        path = Path(f)
        if not path.exists():
            raise ConfigError(f"gin file {f} does not exist")
        chunks.append(f"# === {path}\n" + _inline(path.resolve(), search))
    for b in bindings:
        check_references(b, f"--gin_bindings {b!r}")
    text = "\n".join(chunks + (["# === --gin_bindings"] + bindings if bindings else []))
    return parse_text(text, origin=", ".join(files) or "bindings",
                      files=files, bindings=bindings, search_paths=[str(p) for p in search])


def parse_text(text: str, origin: str = "config", files=None, bindings=None, search_paths=None) -> ParsedConfig:
    """Parse already-inlined config text (what a Ray trial receives) into gin's state."""
    registry.load_plugins()
    gin.clear_config()
    try:
        gin.parse_config(text)
    except Exception as exc:  # noqa: BLE001 - gin raises ValueError, SyntaxError, ...
        raise _rewrite_gin_error(exc, _locate(text, exc, origin)) from None
    return ParsedConfig(list(files or []), list(bindings or []), text, list(search_paths or []))


def _locate(text: str, exc: Exception, origin: str) -> str:
    """Map gin's 'line N' in the inlined text back to the original file and line."""
    m = re.search(r"line (\d+)", str(exc)) or re.search(r"\((\d+), \d+\)", str(exc))
    if not m:
        return origin
    target = int(m.group(1))
    stack: list[list] = []
    current = [origin, 0]
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("# === "):
            current = [line[6:], 0]
            stack = []
        elif line.startswith("# --- begin include "):
            stack.append(current)
            current = [line[len("# --- begin include "):], 0]
        elif line.startswith("# --- end include "):
            current = stack.pop() if stack else current
            current[1] += 1  # the include line itself
        else:
            current[1] += 1
        if lineno == target:
            return f"{current[0]}, line {current[1]}"
    if target > len(text.splitlines()):  # gin's tokenizer reports an unclosed bracket at the end
        return f"{current[0]}, line {current[1]} (end of input)"
    return origin
