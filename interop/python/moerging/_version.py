"""The package's version in the source tree: the <Version> of the repository's Directory.Build.props, the one place
every assembly and package takes its version from. A wheel carries a generated _version.py in place of this file,
stating the version it was built with (interop/python/build_wheel.py reads it here)."""

import os
import re
import xml.etree.ElementTree as ElementTree

# PEP 440 public versions of the forms a release takes (1.2.0, 1.2.0rc1, 1.2.0.post1, 1.2.0.dev3): what a wheel's
# file name and metadata can carry. A .NET pre-release such as 1.2.0-beta.1 is not one and is refused.
_PEP440 = re.compile(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?")

PROPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, os.pardir,
                     "Directory.Build.props")


def read_version(props: str = PROPS) -> str:
    """The one <Version> element of the props file at props; ValueError if there is not exactly one or it is not a
    PEP 440 version."""
    try:
        versions = [e.text or "" for e in ElementTree.parse(props).getroot().iter("Version")]
    except (OSError, ElementTree.ParseError) as error:
        raise ValueError(f"cannot read the version from {os.path.normpath(props)}: {error}") from None
    if len(versions) != 1:
        raise ValueError(f"{os.path.normpath(props)} has {len(versions)} <Version> elements; it must have one")
    version = versions[0].strip()
    if not _PEP440.fullmatch(version):
        raise ValueError(f"<Version> in {os.path.normpath(props)} is {version!r}, not a PEP 440 version "
                         f"(such as 1.2.0 or 1.2.0rc1) that the Python package can carry")
    return version


__version__ = read_version()
