#!/usr/bin/env python3
"""Build a tiny wheel named hermes-agent VERSION for the release install
tests (offline: pip --no-index --find-links OUTDIR).

usage: make_release_wheel.py OUTDIR VERSION [--wrong-version]

Its `hermes` console script answers `--version` with
"Hermes Agent vVERSION" (another version with --wrong-version) and
otherwise runs tests/fake_gateway.py reporting VERSION on /health.
"""
import base64
import hashlib
import os
import sys
import zipfile

out, version = sys.argv[1], sys.argv[2]
says = "0.0.0-wrong" if "--wrong-version" in sys.argv[3:] else version
gateway = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_gateway.py")
cli = f'''import os
import sys


def main():
    if sys.argv[1:2] == ["--version"]:
        print("Hermes Agent v{says}")
        return 0
    os.environ["FAKE_GW_VERSION"] = {version!r}
    os.execv(sys.executable, [sys.executable, {gateway!r}])
'''
dist = f"hermes_agent-{version}.dist-info"
files = {
    "hermes_release_cli.py": cli,
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: hermes-agent\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: make_release_wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{dist}/entry_points.txt": "[console_scripts]\nhermes = hermes_release_cli:main\n",
}
record = []
for name, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(text.encode())}")
record.append(f"{dist}/RECORD,,")
files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
os.makedirs(out, exist_ok=True)
path = os.path.join(out, f"hermes_agent-{version}-py3-none-any.whl")
with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
print(path)
