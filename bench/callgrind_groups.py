#!/usr/bin/env python3
"""Instructions per request by component, from two callgrind runs (bench/profile.sh).

The two runs of one job differ only in the number of requests (N1, N2), so their
difference divided by N2 - N1 is the cost of one request, start-up and the clients'
TLS handshakes cancelled out. Each function's exclusive cost (with what was inlined into
it) is credited to the crate its name starts with. Prints a Markdown table (component, instructions per
request, share) and the most expensive functions.

    callgrind_groups.py RUN_N1.out RUN_N2.out N2_MINUS_N1 [TOP]
"""

import re
import subprocess
import sys

# A function is credited to the crate its name starts with (the function callgrind
# saw, with what was inlined into it); C and assembly symbols by their prefix.
CRATES = {
    "hyper": "hyper (HTTP/1 server and client, HTTP/2 glue)",
    "h2": "h2 (HTTP/2 framing, HPACK)",
    "httparse": "httparse (HTTP/1 head parsing)",
    "http": "http (HeaderMap)",
    "rustls": "rustls (TLS records)",
    "tokio_rustls": "rustls (TLS records)",
    "ring": "ring (AES-GCM, HMAC, SHA-256, X25519, P-256)",
    "tokio": "tokio (runtime, IO driver, timers, channels)",
    "cloakroom": "cloakroom's own code",
    "bytes": "bytes",
    "dashmap": "dashmap and hashbrown (memory store)",
    "hashbrown": "dashmap and hashbrown (memory store)",
    "core": "std and core (not inlined)",
    "alloc": "std and core (not inlined)",
    "std": "std and core (not inlined)",
}
SYMBOLS = [
    ("ring_core_", "ring (AES-GCM, HMAC, SHA-256, X25519, P-256)"),
    ("_aesni_", "ring (AES-GCM, HMAC, SHA-256, X25519, P-256)"),
    ("mi_", "mimalloc (allocation)"),
    ("_mi_", "mimalloc (allocation)"),
    ("__memcpy", "libc memcpy (moves of futures and buffers)"),
    ("__memmove", "libc memcpy (moves of futures and buffers)"),
]


def exclusive(path):
    """Exclusive instructions per function of one callgrind output file."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", path],
        capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)", line)
        if not m or "PROGRAM TOTALS" in line or ":" not in m.group(2):
            continue
        name = m.group(2).split(" [")[0]
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def component(name):
    function = name.partition(":")[2] if ":" in name else name
    function = function.lstrip("<")
    crate = re.split(r"::|<| ", function, maxsplit=1)[0]
    if crate in CRATES:
        return CRATES[crate]
    for prefix, group in SYMBOLS:
        if function.startswith(prefix):
            return group
    return "other"


def main():
    first, second = exclusive(sys.argv[1]), exclusive(sys.argv[2])
    n = int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    per_function = {k: (second.get(k, 0) - first.get(k, 0)) / n for k in set(first) | set(second)}
    groups = {}
    for name, cost in per_function.items():
        groups[component(name)] = groups.get(component(name), 0) + cost
    total = sum(groups.values())
    print("| component | instructions per request | share |")
    print("| --- | ---: | ---: |")
    for group, cost in sorted(groups.items(), key=lambda kv: -kv[1]):
        if abs(cost) >= 1:
            print(f"| {group} | {cost:,.0f} | {100 * cost / total:.0f}% |")
    print(f"| total | {total:,.0f} | 100% |")
    print()
    print("| most expensive functions (exclusive) | instructions per request |")
    print("| --- | ---: |")
    for name, cost in sorted(per_function.items(), key=lambda kv: -kv[1])[:top]:
        file, _, function = name.partition(":")
        short = re.sub(r".*/(registry/src/[^/]+/|rustc/[0-9a-f]+/)", "", file)
        print(f"| `{function[:90]}` ({short.split('/')[0]}) | {cost:,.0f} |")


if __name__ == "__main__":
    main()
