"""Fails when a lock file no longer matches its inputs (`make test` runs it; `make lock` fixes it).

    python scripts/check_lock.py requirements.in:requirements.txt requirements-dev.in:requirements-dev.txt

Offline, in a second: it reads the files pip-compile wrote and checks that

- every requirement of the inputs (following `-r`) is locked at a version it
  allows: an input pinned to a new version, or a new input, fails;
- every locked package is wanted: an input, or reachable from one through
  the lock's own "# via" lines, so an input taken out leaves nothing behind
  unnoticed;
- every locked package has its hashes, and the later locks agree with the
  first one on every package they share (the dev set is constrained to the
  runtime lock).

Packages the inputs name but the locks leave out on purpose (`--unsafe-package`,
listed in the lock's closing WARNING) are allowed to be missing.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass
class Locked:
    version: Version
    hashes: int = 0
    via: set[str] = field(default_factory=set)  # canonical names, or "-r <file>" / "-c <file>"


def inputs(path: Path) -> list[Requirement]:
    """The requirements of an input file and of the files it includes with -r."""
    found: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-c")):
            continue
        if line.startswith("-r"):
            found += inputs(path.parent / line[2:].strip())
        else:
            found.append(Requirement(line))
    return found


def lock(path: Path) -> tuple[dict[str, Locked], set[str]]:
    """A pip-compile output: each package with its version, hashes and "via", and those left out."""
    packages: dict[str, Locked] = {}
    left_out: set[str] = set()
    current: Locked | None = None
    in_via = in_warning = False
    for raw in path.read_text().splitlines():
        pinned = PIN.match(raw)
        if pinned:
            current = packages[canonicalize_name(pinned[1])] = Locked(Version(pinned[2]))
            in_via = False
        elif raw.startswith("# WARNING: The following packages were not pinned"):
            in_warning, current = True, None
        elif in_warning and re.fullmatch(r"# [A-Za-z0-9._-]+", raw):
            left_out.add(canonicalize_name(raw[2:]))
        elif current is not None and raw.strip().startswith("--hash="):
            current.hashes += 1
        elif current is not None and raw.strip().startswith("# via"):
            rest = raw.strip()[len("# via") :].strip()
            in_via = not rest
            if rest:
                current.via.add(_via(rest))
        elif current is not None and in_via and raw.strip().startswith("#   "):
            current.via.add(_via(raw.strip()[1:].strip()))
    return packages, left_out


def _via(text: str) -> str:
    return text if text.startswith("-") else canonicalize_name(text)


def problems(source: Path, target: Path, first: dict[str, Locked] | None) -> list[str]:
    packages, left_out = lock(target)
    requirements = inputs(source)
    asked = {canonicalize_name(requirement.name) for requirement in requirements}
    found: list[str] = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        entry = packages.get(name)
        if entry is None:
            if name not in left_out:
                found.append(f"{source} asks for {requirement}, which {target} does not lock")
        elif not requirement.specifier.contains(entry.version, prereleases=True):
            found.append(f"{source} asks for {requirement}; {target} locks {entry.version}")
    wanted = asked & set(packages)  # the lock's own "via -r" lines may be stale: the inputs decide
    grew = True
    while grew:
        more = {n for n, e in packages.items() if n not in wanted and e.via & (wanted | left_out)}
        wanted |= more
        grew = bool(more)
    found += [
        f"{target} locks {name}, which nothing in {source} needs" for name in packages if name not in wanted
    ]
    found += [
        f"{target} locks {name} without its hashes" for name, entry in packages.items() if not entry.hashes
    ]
    if first is not None:
        found += [
            f"{target} locks {name} {entry.version}, the runtime lock {first[name].version}"
            for name, entry in packages.items()
            if name in first and first[name].version != entry.version
        ]
    return found


def main(pairs: list[str]) -> int:
    found: list[str] = []
    first: dict[str, Locked] | None = None
    for pair in pairs:
        source, target = (Path(part) for part in pair.split(":"))
        found += problems(source, target, first)
        if first is None:
            first = lock(target)[0]
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print("The lock files do not match their inputs: run `make lock`.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
