#!/usr/bin/env bash
# Runs testssl.sh (Debian package `testssl.sh`) against a running cloakroom demo and
# fails on any weak protocol, weak cipher or known TLS vulnerability (a finding of
# severity MEDIUM or worse in the protocol, cipher, forward-secrecy and vulnerability
# checks; certificate trust is not checked: the demo's certificate is self-signed).
#
#   scripts/tls-check.sh            # starts `cloakroom --demo`, checks 127.0.0.1:8443
#   scripts/tls-check.sh HOST:PORT  # checks a proxy that is already running
set -euo pipefail
cd "$(dirname "$0")/.."
command -v testssl >/dev/null 2>&1 || {
  echo "tls-check: testssl is missing: apt-get install testssl.sh" >&2
  exit 2
}

target=${1:-}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
if [ -z "$target" ]; then
  bin=${CLOAKROOM_BIN:-target/debug/cloakroom}
  [ -x "$bin" ] || cargo build --bin cloakroom
  "$bin" --demo --config proxy.toml >/tmp/cloakroom-tls-check.log 2>&1 &
  pid=$!
  target=127.0.0.1:8443
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/8443") 2>/dev/null && break
    sleep 0.1
  done
fi

json=$(mktemp)
# -p protocols, -s standard cipher lists, -f forward secrecy, -U vulnerabilities.
testssl --quiet --color 0 --warnings batch --ip one -p -s -f -U \
  --jsonfile "$json" "https://$target" || true

# Findings of severity MEDIUM, HIGH or CRITICAL fail the check.
bad=$(python3 - "$json" <<'PY'
import json, sys
findings = json.load(open(sys.argv[1]))
bad = [f for f in findings if f.get("severity") in ("MEDIUM", "HIGH", "CRITICAL")]
for f in bad:
    print(f'{f["severity"]:8} {f["id"]}: {f["finding"]}')
PY
)
python3 - "$json" <<'PY'
import json, sys, collections
findings = json.load(open(sys.argv[1]))
count = collections.Counter(f.get("severity") for f in findings)
offered = [f["id"] for f in findings if f["id"] in ("SSLv2","SSLv3","TLS1","TLS1_1","TLS1_2","TLS1_3") and f["finding"].startswith("offered")]
print("tls-check summary:", dict(count), "protocols offered:", " ".join(offered))
PY
rm -f "$json"
if [ -n "$bad" ]; then
  echo "tls-check: FAILED"
  echo "$bad"
  exit 1
fi
echo "tls-check: passed (no weak protocol, cipher or known vulnerability)"
