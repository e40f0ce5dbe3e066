#!/usr/bin/env python3
"""Make a second, otherwise identical release of a hermes-tenantd binary that
reports another version, without a rebuild: every occurrence of the version
string (the `VERSION` constant, inlined where it is used) is replaced by a
string of the same length. Only used by the deployment tests, to prove an
upgrade really switched binaries.

usage: patch_version.py SRC DST OLD NEW   (len(OLD) == len(NEW))
"""
import os
import sys

src, dst, old, new = sys.argv[1:5]
if len(old) != len(new) or old == new:
    sys.exit("NEW must differ from OLD and have the same length")
data = open(src, "rb").read()
count = data.count(old.encode())
if count == 0:
    sys.exit(f"{old!r} not found in {src}")
open(dst, "wb").write(data.replace(old.encode(), new.encode()))
os.chmod(dst, 0o755)
print(f"patched {count} occurrence(s) of {old} -> {new}", file=sys.stderr)
