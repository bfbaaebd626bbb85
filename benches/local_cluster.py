"""A local committee for the reliability scripts: `floe cluster up` in a directory, the PIDs of
the nodes it started (found by their config files, so a script can stop, kill or restart one),
and their URLs from the committee file."""

import os
import subprocess


def up(floe, base, nodes, shards, sync_interval):
    """Starts `nodes` nodes sharing `shards` in `base`; returns (pids by index, URLs)."""
    subprocess.run([floe, "cluster", "up", "--dir", base, "--nodes", str(nodes), "--shards",
                    str(shards), "--sync-interval", str(sync_interval)], check=True,
                   stdout=subprocess.DEVNULL)
    return node_pids(base, nodes), urls(base)


def down(floe, base):
    subprocess.run([floe, "cluster", "down", "--dir", base], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def node_pids(base, count):
    """The PIDs of the nodes of the committee in `base`, by index."""
    pids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        for i in range(count):
            if f"{base}/node-{i}/node.toml".encode() in cmd:
                pids[i] = int(pid)
    return pids


def urls(base):
    committee = open(os.path.join(base, "committee.toml")).read()
    return ["http://" + line.split('"')[1] for line in committee.splitlines()
            if line.startswith("address")]
