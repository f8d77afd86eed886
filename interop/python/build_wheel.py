"""Builds the moerging wheel: the package, py.typed, a generated moerging/_version.py, and the NativeAOT library with
its managed side in moerging/_lib, so that an installed wheel needs neither .NET nor environment variables.

It is the PEP 517 build backend pyproject.toml names (pip install interop/python, pip wheel interop/python), and a
command:

    python3 interop/python/build_wheel.py [--native DIR] [--out DIR]

The native files come from --native, else $MOERGING_NATIVE_DIR, else <repo>/artifacts/native-aot: libmoerging.so.2
(or, without it, the one real file libmoerging.so* there) and MoErging.Interop.so. A hosted build (one with
MoErging.Interop.dll, whose libmoerging.so starts a .NET runtime) is refused. The version is the <Version> of the
repository's Directory.Build.props; the platform tag follows the library's ELF machine (py3-none-linux_x86_64).
The wheel is deterministic: entries sorted (the .dist-info last, RECORD at its end), fixed timestamps, modes 0644,
or 0755 for a file that is executable where it came from.
"""

import argparse
import base64
import csv
import glob
import hashlib
import importlib.util
import io
import os
import stat
import sys
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, os.pardir, os.pardir))
PACKAGE = "moerging"
NATIVE_VARIABLE = "MOERGING_NATIVE_DIR"
DEFAULT_NATIVE = os.path.join(ROOT, "artifacts", "native-aot")
DEFAULT_OUT = os.path.join(ROOT, "artifacts", "python")
MANAGED = "MoErging.Interop.so"    # the NativeAOT managed side the library loads from its own directory
# Ours, and those of the .NET runtime and ILGPU code the NativeAOT library contains (from the repository's root).
LICENSE_FILES = ("LICENSE", "THIRD-PARTY-NOTICES.txt")
HOSTED = "MoErging.Interop.dll"    # the managed side of a hosted build, which needs a .NET runtime
LIBRARY_DIR = PACKAGE + "/_lib"
TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can carry
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine: EM_X86_64, EM_AARCH64
# The [project] fields written into METADATA; any other is refused rather than silently left out.
PROJECT_FIELDS = {"name", "dynamic", "description", "readme", "license", "requires-python", "dependencies",
                  "classifiers"}
README_TYPES = {".md": "text/markdown", ".rst": "text/x-rst", ".txt": "text/plain"}


class BuildError(Exception):
    """The wheel cannot be built as asked; the message says why and what to do."""


def _source_module(name: str) -> Any:
    """The package's module name.py, loaded by path: importing the package would load the library."""
    spec = importlib.util.spec_from_file_location(f"_moerging_source{name}", os.path.join(HERE, PACKAGE, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def version() -> str:
    """The package's version, as its own source _version.py reads it."""
    try:
        found: str = _source_module("_version").__version__
    except ValueError as error:
        raise BuildError(str(error)) from None
    return found


# The file moerging/_native.py loads from moerging/_lib: named for the SONAME of the ABI the package speaks.
LIBRARY: str = _source_module("_abi").LIBRARY_NAME


def project() -> Dict[str, Any]:
    """pyproject.toml's [project] table, checked to hold only what this backend writes."""
    try:
        import tomllib
    except ImportError:
        raise BuildError(f"building the wheel needs Python 3.11 or later (for tomllib); this is {sys.version.split()[0]}"
                         ) from None
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as file:
        table: Dict[str, Any] = tomllib.load(file)["project"]
    unknown = sorted(set(table) - PROJECT_FIELDS)
    if unknown:
        raise BuildError(f"pyproject.toml [project] has {', '.join(unknown)}, which build_wheel.py does not write into "
                         f"the wheel's METADATA; teach it to, or remove them")
    if table.get("dynamic") != ["version"] or "version" in table:
        raise BuildError("pyproject.toml [project] must have dynamic = [\"version\"] and no version: the version is "
                         "Directory.Build.props's")
    return table


def metadata(table: Mapping[str, Any], release: str) -> str:
    """The METADATA file (core metadata 2.4) for [project] and the version."""
    readme = os.path.join(HERE, table["readme"])
    content_type = README_TYPES.get(os.path.splitext(readme)[1].lower())
    if content_type is None:
        raise BuildError(f"readme {table['readme']} has none of the suffixes {', '.join(README_TYPES)}")
    with open(readme, encoding="utf-8") as file:
        description = file.read()
    lines = ["Metadata-Version: 2.4", f"Name: {table['name']}", f"Version: {release}",
             f"Summary: {table['description']}", f"License-Expression: {table['license']}"]
    lines += [f"License-File: {name}" for name in LICENSE_FILES]
    lines.append(f"Requires-Python: {table['requires-python']}")
    lines += [f"Requires-Dist: {d}" for d in table.get("dependencies", [])]
    lines += [f"Classifier: {c}" for c in table.get("classifiers", [])]
    lines.append(f"Description-Content-Type: {content_type}")
    if any("\n" in line for line in lines):
        raise BuildError("a pyproject.toml [project] value spans lines; METADATA fields must not")
    return "\n".join(lines) + "\n\n" + description


def native_files(directory: str) -> Tuple[str, str]:
    """The paths of the library and of its managed side in directory; BuildError if they are not a NativeAOT
    build's."""
    if not os.path.isdir(directory):
        raise BuildError(f"the native directory {directory} does not exist; build the NativeAOT library first, or "
                         f"name its directory with --native or {NATIVE_VARIABLE}")
    if os.path.exists(os.path.join(directory, HOSTED)):
        raise BuildError(f"{directory} holds a hosted build ({HOSTED}): its library starts a .NET runtime, which a "
                         f"wheel must not need; give the NativeAOT build's directory (artifacts/native-aot)")
    library = os.path.join(directory, LIBRARY)
    if not os.path.isfile(library):
        others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(directory), "libmoerging.so*")))
        raise BuildError(f"{directory} has no {LIBRARY}, the library of the ABI this package speaks"
                         + (f" (it has {', '.join(others)}: a build of another ABI?)" if others else ""))
    managed = os.path.join(directory, MANAGED)
    if not os.path.isfile(managed):
        raise BuildError(f"{directory} has no {MANAGED}, the managed side {LIBRARY} loads")
    return library, managed


def platform_tag(library: str) -> str:
    """linux_<machine> of a 64-bit little-endian ELF shared library; BuildError for anything else."""
    with open(library, "rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise BuildError(f"{library} is not an ELF shared library")
    machine = int.from_bytes(header[18:20], "little")
    if header[4] != 2 or header[5] != 1 or machine not in ELF_MACHINES:
        raise BuildError(f"{library} is not a 64-bit little-endian x86_64 or aarch64 ELF library (class {header[4]}, "
                         f"data {header[5]}, machine {machine})")
    return "linux_" + ELF_MACHINES[machine]


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _read(path: str) -> Tuple[bytes, int]:
    """A file's bytes and its mode in the wheel: 0755 if executable where it is, else 0644."""
    with open(path, "rb") as file:
        data = file.read()
    return data, 0o755 if os.stat(path).st_mode & 0o111 else 0o644


def build(native: str, out: str) -> str:
    """Writes the wheel into out (created if needed) and returns its path."""
    release, table = version(), project()
    library, managed = native_files(native)
    machine = platform_tag(library)
    if platform_tag(managed) != machine:
        raise BuildError(f"{managed} is built for {platform_tag(managed)}, {library} for {machine}")
    tag = "py3-none-" + machine
    sources = sorted(glob.glob(os.path.join(glob.escape(os.path.join(HERE, PACKAGE)), "*.py")))
    files: Dict[str, Tuple[bytes, int]] = {}
    for path in sources + [os.path.join(HERE, PACKAGE, "py.typed")]:
        if os.path.basename(path) != "_version.py":  # replaced by the version it is built as, below
            files[f"{PACKAGE}/{os.path.basename(path)}"] = _read(path)
    files[f"{PACKAGE}/_version.py"] = (
        f'"""The version this wheel was built as: the <Version> of Directory.Build.props."""\n\n'
        f'__version__ = "{release}"\n'.encode("utf-8"), 0o644)
    files[f"{LIBRARY_DIR}/{LIBRARY}"] = _read(library)
    files[f"{LIBRARY_DIR}/{MANAGED}"] = _read(managed)
    info = f"{table['name']}-{release}.dist-info"
    for name in LICENSE_FILES:
        with open(os.path.join(ROOT, name), "rb") as file:
            files[f"{info}/licenses/{name}"] = (file.read(), 0o644)
    files[f"{info}/METADATA"] = (metadata(table, release).encode("utf-8"), 0o644)
    files[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: moerging build_wheel.py\nRoot-Is-Purelib: false\n"
                              f"Tag: {tag}\n".encode("utf-8"), 0o644)
    names = sorted(files, key=lambda n: (n.startswith(info + "/"), n))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name in names:
        writer.writerow([name, _digest(files[name][0]), len(files[name][0])])
    writer.writerow([f"{info}/RECORD", "", ""])
    files[f"{info}/RECORD"] = (record.getvalue().encode("utf-8"), 0o644)
    names.append(f"{info}/RECORD")

    os.makedirs(out, exist_ok=True)
    wheel = os.path.join(out, f"{table['name']}-{release}-{tag}.whl")
    partial = wheel + ".partial"
    with zipfile.ZipFile(partial, "w") as archive:
        for name in names:
            data, mode = files[name]
            entry = zipfile.ZipInfo(name, date_time=TIMESTAMP)
            entry.create_system = 3  # Unix, so that the mode below is read
            entry.external_attr = (stat.S_IFREG | mode) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data, compresslevel=9)
    os.replace(partial, wheel)
    return wheel


def native_directory(environment: Mapping[str, str]) -> str:
    return environment.get(NATIVE_VARIABLE) or DEFAULT_NATIVE


# PEP 517 hooks. No source distribution: the library inside the wheel is built from the whole repository with the
# .NET SDK, which an sdist of this directory could not do.

def build_wheel(wheel_directory: str, config_settings: Optional[Dict[str, Any]] = None,
                metadata_directory: Optional[str] = None) -> str:
    return os.path.basename(build(native_directory(os.environ), wheel_directory))


def build_sdist(sdist_directory: str, config_settings: Optional[Dict[str, Any]] = None) -> str:
    raise BuildError("moerging has no source distribution: its library is built from the whole repository "
                     "(dotnet cake); build the wheel instead (pip wheel, or python3 -m build --wheel)")


def main(arguments: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Builds the moerging wheel with the NativeAOT library inside.")
    parser.add_argument("--native", help=f"the NativeAOT build's directory (default: ${NATIVE_VARIABLE}, else "
                                         f"{DEFAULT_NATIVE})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"where the wheel goes (default: {DEFAULT_OUT})")
    options = parser.parse_args(arguments)
    try:
        print(build(options.native or native_directory(os.environ), options.out))
    except BuildError as error:
        print(f"build_wheel.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
