#!/usr/bin/env python3
"""Surface benchmarks (figures, not pass/fail), against the real binary.

1. start with 5,000 skills: time from spawn to the first full index, RSS;
2. change-to-visible latency of a skill edit (median/max over N edits);
3. paginated listing of a 100,000-file directory (first page, a middle
   page, and a full walk).

Usage: benches/surface.py [path/to/hermes-tenantd]   (default: target/release, else debug)
"""
import json, os, statistics, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else next(
    p for p in (f"{ROOT}/target/release/hermes-tenantd", f"{ROOT}/target/debug/hermes-tenantd")
    if os.path.exists(p))
TOKEN = "bench-credential-0123456789abcdef"
TENANT = "bench"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                yield line.split()[0].rstrip(":"), int(line.split()[1])


def main():
    tmp = tempfile.mkdtemp(prefix="surface-bench-")
    home = f"{tmp}/home"
    big = f"{home}/workspace/big"
    os.makedirs(big)
    t = time.time()
    for c in range(50):
        for s in range(100):
            d = f"{home}/skills/cat{c:02}/skill{s:03}"
            os.makedirs(d)
            with open(f"{d}/SKILL.md", "w") as f:
                f.write(f"---\nname: s{c:02}-{s:03}\ndescription: Skill {s} of category {c} for benchmarking\nversion: 1.0.0\n---\n# body\n" + "text " * 200)
    for i in range(100_000):
        open(f"{big}/f{i:06}.txt", "w").close()
    print(f"fixture: 5000 skills + 100000 files in {time.time()-t:.1f}s")
    with open(f"{tmp}/cred", "w") as f:
        f.write(TOKEN)
    os.chmod(f"{tmp}/cred", 0o600)
    with open(f"{tmp}/config.toml", "w") as f:
        f.write(f'tenant_id = "{TENANT}"\ndata_dir = "{tmp}/data"\n[listen]\naddr = "127.0.0.1:0"\n'
                f'[auth]\ncredential_file = "{tmp}/cred"\n[log]\nformat = "json"\n'
                f'[gateway]\nhermes_home = "{home}"\n[limits]\npage_size_max = 1000\n')
    t0 = time.time()
    p = subprocess.Popen([BIN, "run", "--config", f"{tmp}/config.toml"], stderr=subprocess.PIPE, text=True)
    addr, indexed = [None], threading.Event()
    first_index = [None]

    def reader():
        for line in p.stderr:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("message") == "listening":
                addr[0] = v.get("addr")
            if v.get("message") == "skills index reconciled" and first_index[0] is None:
                first_index[0] = (time.time() - t0, v)
                indexed.set()
    threading.Thread(target=reader, daemon=True).start()
    indexed.wait(120)
    secs, line = first_index[0]
    print(f"start + index 5000 skills: {secs*1000:.0f} ms from spawn "
          f"(index itself {line.get('elapsed_ms')} ms, upserted {line.get('upserted')})")
    print("memory after indexing:", dict(rss_kb(p.pid)))
    base = f"http://{addr[0]}/v1/tenant-runtime/{TENANT}"

    def get(path):
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    lat = []
    for i in range(20):
        path = f"{home}/skills/cat07/skill042/SKILL.md"
        desc = f"edited-{i}-marker"
        t = time.time()
        with open(path, "w") as f:
            f.write(f"---\nname: s07-042\ndescription: {desc}\n---\n")
        while True:
            items = get(f"/skills?q={desc}")["items"]
            if items:
                break
            time.sleep(0.005)
        lat.append((time.time() - t) * 1000)
    print(f"skill edit change-to-visible over 20 edits: median {statistics.median(lat):.0f} ms, "
          f"max {max(lat):.0f} ms (debounce 150 ms default)")

    t = time.time(); first = get("/files?root=workspace&path=big&limit=100"); t1 = (time.time() - t) * 1000
    cursor, pages, t = first["next_cursor"], 1, time.time()
    page_times = []
    while cursor:
        s = time.time()
        page = get(f"/files?root=workspace&path=big&limit=1000&cursor={cursor}")
        page_times.append((time.time() - s) * 1000)
        cursor, pages = page["next_cursor"], pages + 1
    walk = time.time() - t
    print(f"100000-file directory: first page (100) {t1:.0f} ms; walk in pages of 1000: "
          f"{pages} pages, {walk:.1f} s total, median page {statistics.median(page_times):.0f} ms, "
          f"max {max(page_times):.0f} ms")
    print("memory at end:", dict(rss_kb(p.pid)))
    p.terminate(); p.wait(30)
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
