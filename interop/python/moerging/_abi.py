"""The ABI of moerging.h this package speaks (MOE_ABI_VERSION), and so the library file it loads: the file is named
for its SONAME, libmoerging.so.<ABI>. Nothing here loads the library, so the wheel builder reads it by path."""

ABI_VERSION = 2
LIBRARY_NAME = f"libmoerging.so.{ABI_VERSION}"
