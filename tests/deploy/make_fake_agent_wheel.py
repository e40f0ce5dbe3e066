#!/usr/bin/env python3
"""Build a wheel named hermes-agent VERSION whose `hermes` command runs
tests/deploy/fake_gateway.py reporting VERSION, so the Ansible role's
agent venv upgrade path can be tested offline (pip --no-index --find-links).

usage: make_fake_agent_wheel.py OUTDIR VERSION [--broken]
  --broken: `hermes gateway run` exits 1 at once (an agent release that never gets ready)
"""
import base64
import hashlib
import os
import sys
import zipfile

out, version = sys.argv[1], sys.argv[2]
broken = "--broken" in sys.argv[3:]
here = os.path.dirname(os.path.abspath(__file__))
gateway = open(os.path.join(here, "fake_gateway.py")).read()
launcher = f'''import sys
import hermes_fake_gateway


def main():
    argv = [a for a in sys.argv[1:] if a not in ("gateway", "run", "--external-supervisor")]
    sys.argv = [sys.argv[0], "--version", {version!r}] + argv + ({["--exit-at-once"] if broken else []!r})
    sys.exit(hermes_fake_gateway.main())
'''
dist = f"hermes_agent-{version}.dist-info"
files = {
    "hermes_fake_gateway.py": gateway,
    "hermes_fake_cli.py": launcher,
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: hermes-agent\nVersion: {version}\nSummary: test stand-in\nProvides-Extra: mcp\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: make_fake_agent_wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{dist}/entry_points.txt": "[console_scripts]\nhermes = hermes_fake_cli:main\n",
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
