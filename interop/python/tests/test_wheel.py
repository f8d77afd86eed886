"""Tests of interop/python/build_wheel.py on fake native directories (files of known bytes with an ELF header), read
back with zipfile, csv, hashlib and email independently of the builder. No library is loaded. Run alone with

    python3 interop/python/tests/test_wheel.py

or as part of test_moerging.py, which runs these tests too.
"""

import base64
import csv
import email.parser
import hashlib
import importlib.util
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
import unittest.mock
import zipfile

PYTHON_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
ROOT = os.path.normpath(os.path.join(PYTHON_DIR, os.pardir, os.pardir))
sys.path.insert(0, PYTHON_DIR)

import build_wheel  # noqa: E402


def props_version():
    """<Version> of Directory.Build.props, read with a regular expression (the builder parses XML)."""
    with open(os.path.join(ROOT, "Directory.Build.props"), encoding="utf-8") as file:
        found = re.findall(r"<Version>\s*([^<\s]+)\s*</Version>", file.read())
    assert len(found) == 1, f"Directory.Build.props has {len(found)} <Version> elements"
    return found[0]


def elf(machine, payload, elf_class=2):
    """An ELF header (little-endian, shared object, of machine) followed by payload."""
    return b"\x7fELF" + bytes([elf_class, 1, 1, 0]) + bytes(8) + (3).to_bytes(2, "little") \
        + machine.to_bytes(2, "little") + bytes(44) + payload


def write(path, data, mode=0o755):
    with open(path, "wb") as file:
        file.write(data)
    os.chmod(path, mode)


class WheelTests(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="moerging-wheel-")
        self.addCleanup(shutil.rmtree, self.root)
        self.library = elf(62, b"the library " + hashlib.sha512(b"library").digest())
        self.managed = elf(62, b"the managed side " + hashlib.sha512(b"managed").digest())

    def native(self, name="native", library=None, managed=None, files=()):
        """A fake native directory: libmoerging.so.2 (with a libmoerging.so link) and MoErging.Interop.so, or
        what library and managed say, plus files {name: bytes}."""
        directory = os.path.join(self.root, name)
        os.makedirs(directory)
        if library is not False:
            write(os.path.join(directory, "libmoerging.so.2"), library or self.library)
            os.symlink("libmoerging.so.2", os.path.join(directory, "libmoerging.so"))
        if managed is not False:
            write(os.path.join(directory, "MoErging.Interop.so"), managed or self.managed)
        for file_name, data in dict(files).items():
            write(os.path.join(directory, file_name), data, 0o644)
        return directory

    def build(self, native, out="out"):
        return build_wheel.build(native, os.path.join(self.root, out))

    def test_contents(self):
        version = props_version()
        wheel = self.build(self.native(files={"libmoerging.so.2.dbg": b"symbols", "notes.txt": b"not bundled"}))
        self.assertEqual(os.path.basename(wheel), f"moerging-{version}-py3-none-linux_x86_64.whl")
        info = f"moerging-{version}.dist-info"
        sources = sorted(n for n in os.listdir(os.path.join(PYTHON_DIR, "moerging")) if n.endswith(".py"))
        self.assertIn("_version.py", sources)
        package = [f"moerging/{n}" for n in sources] + ["moerging/py.typed", "moerging/_lib/libmoerging.so.2",
                                                        "moerging/_lib/MoErging.Interop.so"]
        dist_info = [f"{info}/METADATA", f"{info}/WHEEL", f"{info}/licenses/LICENSE",
                     f"{info}/licenses/THIRD-PARTY-NOTICES.txt"]
        expected = sorted(package) + sorted(dist_info) + [f"{info}/RECORD"]
        with zipfile.ZipFile(wheel) as archive:
            self.assertEqual(archive.namelist(), expected, "entries, in order (sorted, the .dist-info last, RECORD at "
                                                           "its end)")
            self.assertEqual(archive.testzip(), None)
            read = {n: archive.read(n) for n in expected}
            entries = {e.filename: e for e in archive.infolist()}

        self.assertEqual(read["moerging/_lib/libmoerging.so.2"], self.library)
        self.assertEqual(read["moerging/_lib/MoErging.Interop.so"], self.managed)
        self.assertEqual(read["moerging/py.typed"], b"")
        for name in sources:
            if name != "_version.py":
                with open(os.path.join(PYTHON_DIR, "moerging", name), "rb") as file:
                    self.assertEqual(read[f"moerging/{name}"], file.read(), name)
        generated = {}
        exec(read["moerging/_version.py"].decode("utf-8"), generated)
        self.assertEqual(generated["__version__"], version)
        for name in ("LICENSE", "THIRD-PARTY-NOTICES.txt"):
            with open(os.path.join(ROOT, name), "rb") as file:
                self.assertEqual(read[f"{info}/licenses/{name}"], file.read(), name)

        for name, entry in entries.items():
            mode = entry.external_attr >> 16
            self.assertEqual(entry.date_time, (1980, 1, 1, 0, 0, 0), name)
            self.assertTrue(stat.S_ISREG(mode), f"{name}: mode {mode:o} is not a regular file's")
            self.assertEqual(stat.S_IMODE(mode), 0o755 if name.endswith(".so.2") or name.endswith(".so") else 0o644,
                             name)

        rows = list(csv.reader(io.StringIO(read[f"{info}/RECORD"].decode("utf-8"))))
        self.assertEqual([r[0] for r in rows], expected, "RECORD lists every entry once, in the wheel's order")
        self.assertEqual(rows[-1], [f"{info}/RECORD", "", ""])
        for name, digest, size in rows[:-1]:
            expected_digest = base64.urlsafe_b64encode(hashlib.sha256(read[name]).digest()).rstrip(b"=").decode()
            self.assertEqual((digest, int(size)), (f"sha256={expected_digest}", len(read[name])), name)

        wheel_file = email.parser.Parser().parsestr(read[f"{info}/WHEEL"].decode("utf-8"))
        self.assertEqual((wheel_file["Wheel-Version"], wheel_file["Root-Is-Purelib"], wheel_file.get_all("Tag")),
                         ("1.0", "false", ["py3-none-linux_x86_64"]))
        metadata = email.parser.Parser().parsestr(read[f"{info}/METADATA"].decode("utf-8"))
        self.assertEqual((metadata["Metadata-Version"], metadata["Name"], metadata["Version"]), ("2.4", "moerging",
                                                                                                  version))
        self.assertEqual((metadata["License-Expression"], metadata.get_all("License-File")),
                         ("Apache-2.0", ["LICENSE", "THIRD-PARTY-NOTICES.txt"]))
        self.assertEqual(metadata["Requires-Python"], ">=3.9")
        self.assertEqual(metadata.get_all("Requires-Dist"), ["numpy>=1.22"])
        self.assertIn("Typing :: Typed", metadata.get_all("Classifier"))
        self.assertEqual(metadata["Description-Content-Type"], "text/markdown")
        with open(os.path.join(PYTHON_DIR, "README.md"), encoding="utf-8") as file:
            self.assertEqual(metadata.get_payload(), file.read())

    def test_deterministic(self):
        """The same inputs give the same bytes, whatever the files' times and the permission bits beyond x."""
        native = self.native()
        first = self.build(native, "first")
        os.utime(os.path.join(native, "libmoerging.so.2"), (1e9, 1e9))
        os.chmod(os.path.join(native, "MoErging.Interop.so"), 0o700)
        second = self.build(native, "second")
        with open(first, "rb") as a, open(second, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_modes_follow_the_executable_bit(self):
        native = self.native()
        os.chmod(os.path.join(native, "MoErging.Interop.so"), 0o644)
        with zipfile.ZipFile(self.build(native)) as archive:
            modes = {e.filename: stat.S_IMODE(e.external_attr >> 16) for e in archive.infolist()}
        self.assertEqual((modes["moerging/_lib/libmoerging.so.2"], modes["moerging/_lib/MoErging.Interop.so"]),
                         (0o755, 0o644))

    def test_library_through_a_link(self):
        """libmoerging.so.2 may be a link to the file: the file's bytes are bundled under the SONAME's name."""
        native = self.native("versioned", library=False)
        write(os.path.join(native, "libmoerging.so.2.0.0"), self.library)
        os.symlink("libmoerging.so.2.0.0", os.path.join(native, "libmoerging.so.2"))
        with zipfile.ZipFile(self.build(native, "linked")) as archive:
            self.assertEqual(archive.read("moerging/_lib/libmoerging.so.2"), self.library)

    def test_aarch64(self):
        native = self.native(library=elf(183, b"arm"), managed=elf(183, b"arm managed"))
        self.assertTrue(self.build(native).endswith("-py3-none-linux_aarch64.whl"))

    def test_refusals(self):
        missing = os.path.join(self.root, "missing")
        hosted = self.native("hosted", managed=False, files={"MoErging.Interop.dll": b"MZ"})
        no_managed = self.native("no-managed", managed=False)
        no_library = self.native("no-library", library=False)
        other_abi = self.native("other-abi", library=False, files={"libmoerging.so.3": self.library})
        cases = [
            (missing, f"the native directory {re.escape(missing)} does not exist; build the NativeAOT library first"),
            (hosted, "holds a hosted build \\(MoErging.Interop.dll\\): its library starts a .NET runtime, which a "
                     "wheel must not need"),
            (no_managed, "has no MoErging.Interop.so, the managed side libmoerging.so.2 loads"),
            (no_library, "has no libmoerging.so.2, the library of the ABI this package speaks$"),
            (other_abi, "has no libmoerging.so.2, the library of the ABI this package speaks \\(it has "
                        "libmoerging.so.3: a build of another ABI\\?\\)$"),
            (self.native("text", library=b"not a library"), "libmoerging.so.2 is not an ELF shared library"),
            (self.native("32-bit", library=elf(62, b"", elf_class=1)), "is not a 64-bit little-endian x86_64 or "
                                                                       "aarch64 ELF library \\(class 1"),
            (self.native("riscv", library=elf(243, b"")), "machine 243\\)"),
            (self.native("mixed", managed=elf(183, b"")), "MoErging.Interop.so is built for linux_aarch64, .* for "
                                                          "linux_x86_64"),
        ]
        out = os.path.join(self.root, "refused")
        for directory, pattern in cases:
            with self.subTest(directory=os.path.basename(directory)), \
                    self.assertRaisesRegex(build_wheel.BuildError, pattern):
                build_wheel.build(directory, out)
        self.assertFalse(os.path.exists(out), "a refused build writes nothing")

    def test_pep517_hooks_and_environment(self):
        native, out = self.native(), os.path.join(self.root, "hook")
        os.makedirs(out)
        with unittest.mock.patch.dict(os.environ, {"MOERGING_NATIVE_DIR": native}):
            name = build_wheel.build_wheel(out)
        self.assertEqual(os.listdir(out), [name])
        with zipfile.ZipFile(os.path.join(out, name)) as archive:
            self.assertEqual(archive.read("moerging/_lib/libmoerging.so.2"), self.library)
        self.assertEqual(build_wheel.native_directory({}), os.path.join(ROOT, "artifacts", "native-aot"))
        with self.assertRaisesRegex(build_wheel.BuildError, "no source distribution"):
            build_wheel.build_sdist(out)

    def test_command(self):
        script, out = os.path.join(PYTHON_DIR, "build_wheel.py"), os.path.join(self.root, "command")
        done = subprocess.run([sys.executable, script, "--native", self.native(), "--out", out], capture_output=True,
                              text=True)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertEqual(done.stdout, os.path.join(out, f"moerging-{props_version()}-py3-none-linux_x86_64.whl\n"))
        self.assertTrue(os.path.isfile(done.stdout.strip()))
        hosted = self.native("hosted", files={"MoErging.Interop.dll": b"MZ"})
        done = subprocess.run([sys.executable, script, "--out", out], capture_output=True, text=True,
                              env={**os.environ, "MOERGING_NATIVE_DIR": hosted})
        self.assertEqual(done.returncode, 1)
        self.assertRegex(done.stderr, f"^build_wheel.py: {re.escape(hosted)} holds a hosted build")

    def test_version_source(self):
        """The builder's version is Directory.Build.props's; a props without exactly one PEP 440 <Version> is
        refused by the package's reader, naming the file."""
        self.assertEqual(build_wheel.version(), props_version())
        # The source tree's reader, loaded by path: importing the package would load the library.
        spec = importlib.util.spec_from_file_location("source_version", os.path.join(PYTHON_DIR, "moerging",
                                                                                     "_version.py"))
        _version = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_version)
        for text, pattern in (("<Project><PropertyGroup><Version>1.2.0-beta.1</Version></PropertyGroup></Project>",
                               "is '1.2.0-beta.1', not a PEP 440 version"),
                              ("<Project><PropertyGroup></PropertyGroup></Project>", "has 0 <Version> elements"),
                              ("<Project><Version>1</Version><Version>2</Version></Project>",
                               "has 2 <Version> elements"),
                              ("<Project>", "cannot read the version")):
            props = os.path.join(self.root, "Directory.Build.props")
            with open(props, "w") as file:
                file.write(text)
            with self.subTest(text=text), self.assertRaisesRegex(ValueError, pattern):
                _version.read_version(props)
        self.assertEqual(_version.read_version(os.path.join(ROOT, "Directory.Build.props")), props_version())


if __name__ == "__main__":
    unittest.main()
