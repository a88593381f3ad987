"""Re-fetch the browser builds that GraphiQL needs from the npm registry and vendor them into api/static/vendor.

    python scripts/update_vendor.py            # install scripts/vendor/package-lock.json, copy, write the manifest
    python scripts/update_vendor.py --check    # install the same and fail unless api/static/vendor holds exactly it
    python scripts/update_vendor.py --upgrade  # after editing the versions in scripts/vendor/package.json

`npm ci` checks every tarball against the sha-512 `integrity` of package-lock.json before anything is copied. The
manifest (api/static/vendor/manifest.json) records each package's version and lock integrity and each served
file's sha-384 in Subresource Integrity form: the GraphiQL page puts those in its `integrity` attributes, and
tests/test_graphiql.py checks them against the files, offline. LICENSES.txt holds the licence of every package of
the installed tree, as the graphiql bundle contains its dependencies.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scripts" / "vendor"
VENDOR = ROOT / "api" / "static" / "vendor"

# Served name -> (npm package, path inside it).
FILES = {
    "react.production.min.js": ("react", "umd/react.production.min.js"),
    "react-dom.production.min.js": ("react-dom", "umd/react-dom.production.min.js"),
    "graphiql.min.js": ("graphiql", "graphiql.min.js"),
    "graphiql.min.css": ("graphiql", "graphiql.min.css"),
    "plugin-explorer.umd.js": ("@graphiql/plugin-explorer", "dist/index.umd.js"),
    "plugin-explorer.css": ("@graphiql/plugin-explorer", "dist/style.css"),
}


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def install(work: Path, upgrade: bool) -> None:
    shutil.copy(PACKAGE / "package.json", work / "package.json")
    if not upgrade:
        shutil.copy(PACKAGE / "package-lock.json", work / "package-lock.json")
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("update_vendor: npm is needed (apt-get install npm)")
    command = [npm, "install" if upgrade else "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"update_vendor: {' '.join(command[1:])} failed:\n{proc.stdout}\n{proc.stderr}")
    if upgrade:
        shutil.copy(work / "package-lock.json", PACKAGE / "package-lock.json")


def built(work: Path) -> dict[str, bytes]:
    """The vendored files as this install makes them: served files, LICENSES.txt, manifest.json."""
    lock = json.loads((work / "package-lock.json").read_text())["packages"]
    pins = json.loads((work / "package.json").read_text())["dependencies"]
    packages = {}
    for name, version in sorted(pins.items()):
        entry = lock[f"node_modules/{name}"]
        if entry["version"] != version:
            sys.exit(f"update_vendor: {name} installed as {entry['version']}, package.json pins {version}")
        packages[name] = {"version": version, "integrity": entry["integrity"], "license": entry.get("license")}
    out: dict[str, bytes] = {}
    files = {}
    for served, (package, path) in FILES.items():
        data = (work / "node_modules" / package / path).read_bytes()
        out[served] = data
        files[served] = {"package": package, "path": path, "integrity": sri(data)}
    out["LICENSES.txt"] = licences(work, lock).encode()
    manifest = {
        "comment": "Written by scripts/update_vendor.py; checked by tests/test_graphiql.py.",
        "packages": packages,
        "files": files,
        "licenses": {"file": "LICENSES.txt", "integrity": sri(out["LICENSES.txt"])},
    }
    out["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    return out


def licences(work: Path, lock: dict[str, dict]) -> str:
    parts = ["Licences of the npm packages whose builds are in this folder (and of what those builds bundle).\n"]
    for key in sorted(k for k in lock if k.startswith("node_modules/") and not lock[k].get("dev")):
        folder = work / key
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().startswith(("license", "licence")))
        name = key.rsplit("node_modules/", 1)[1]
        declared = lock[key].get("license", "not stated")
        if found:
            text = found[0].read_text(errors="replace").strip()
        else:  # some releases ship none: say what package.json declares, and who the author is
            meta = json.loads((folder / "package.json").read_text())
            author = meta.get("author")
            author = author.get("name") if isinstance(author, dict) else author
            text = f"The package ships no licence file; its package.json declares the licence {declared}"
            text += f", author {author}." if author else "."
        header = f"{name} {lock[key].get('version', '')} ({declared})"
        parts.append(f"\n{'=' * 100}\n{header}\n{'=' * 100}\n{text}\n")
    return "".join(parts)


def _same(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail unless the vendored files match a fresh install")
    mode.add_argument("--upgrade", action="store_true", help="re-resolve package.json and rewrite package-lock.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-db-vendor-") as tmp:
        work = Path(tmp)
        install(work, upgrade=args.upgrade)
        fresh = built(work)
    if args.check:
        present = {p.name for p in VENDOR.iterdir()} if VENDOR.is_dir() else set()
        stale = sorted(n for n, data in fresh.items() if not _same(VENDOR / n, data))
        extra = sorted(present - set(fresh))
        if stale or extra:
            sys.exit(f"update_vendor: api/static/vendor differs from the npm releases: {stale + extra}")
        print(f"update_vendor: api/static/vendor matches package-lock.json ({len(fresh)} files)")
        return
    if VENDOR.is_dir():
        shutil.rmtree(VENDOR)
    VENDOR.mkdir(parents=True)
    for name, data in fresh.items():
        (VENDOR / name).write_bytes(data)
    size = sum(len(d) for d in fresh.values())
    print(f"update_vendor: wrote {len(fresh)} files ({size / 1e6:.1f} MB) to {VENDOR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
