# shellcheck shell=bash
# The report of bench/compare.sh (sourced): one table, a row per job, from the VALS,
# ERRORS and BUSY arrays the run filled in. write_report prints Markdown.

# Rows: id | what is measured | decimals | target kind | target. Kinds: ratio (lower is
# better: cloakroom ÷ the lowest peer ≤ target), higher (higher is better: cloakroom ÷ the
# highest peer ≥ target), bytes (cloakroom's figure ≤ target), none (no target).
report_rows() {
  cat <<EOF
sticky|h1 keep-alive, sticky cookie on every request (wrk -c32): CPU µs/req|1|ratio|0.85
newsess|h1 keep-alive, no cookie: a new session per request (wrk -c32): CPU µs/req|1|ratio|1.0
h2|h2, 10 connections × 5 streams, sticky cookie (h2load -c10 -m5): CPU µs/req|1|ratio|1.0
fixed_p50|fixed 10,000 req/s over 50 h1 connections, sticky (h2load --rps): p50 ms|2|ratio|1.0
fixed_p99|same run: p99 ms|2|ratio|1.0
closed_p99|closed loop, 50 connections, sticky (wrk -c50): p99 ms|2|ratio|1.2
handshake|new TLS connection per request, full P-256 handshake ($HS_RATE conn/s, h2load -r): CPU µs/conn|0|ratio|0.5
idle|RSS per idle TLS keep-alive connection, $IDLE_CONNS connections$IDLE_NOTE: bytes/conn|0|ratio|1.0
session|RSS per anonymous session, $SESSIONS sessions (cloakroom only): bytes/session|0|bytes|300
sticky_rps|same run: requests/s|0|none|
h2_rps|same run: requests/s|0|none|
sticky_all|**all cores** (cloakroom \`workers = 0\`, HAProxy \`nbthread $(nproc)\`, nginx \`worker_processes auto\`, nothing pinned): sticky, wrk -c32: CPU µs/req|1|ratio|1.0
sticky_rps_all|all cores, same run: requests/s at saturation|0|higher|1.0
newsess_all|all cores: new session per request (wrk -c32): CPU µs/req|1|ratio|1.0
newsess_rps_all|all cores, same run: requests/s at saturation|0|higher|1.0
h2_all|all cores: h2, 10 connections × 5 streams: CPU µs/req|1|ratio|1.0
h2_rps_all|all cores, same run: requests/s at saturation|0|higher|1.0
fixed_p50_all|all cores: fixed 10,000 req/s over 50 h1 connections: p50 ms|2|ratio|1.0
fixed_p99_all|all cores, same run: p99 ms|2|ratio|1.0
fixed_rps_all|all cores, same run: requests/s held (of 10,000)|0|higher|1.0
scale_p99_all|all cores: $IDLE_CONNS idle TLS connections + $SCALE_ACTIVE active (wrk -c$SCALE_ACTIVE, sticky): p99 ms of the active load|2|ratio|1.0
scale_rss_all|all cores, same run: proxy RSS MB|1|ratio|1.2
EOF
}

# Median of numbers given as arguments ("" when none).
median() {
  [ $# -gt 0 ] || { echo ""; return; }
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# A cell: the median of a row for a proxy, with its error count if any.
# Sets CELL (text) and CELL_VALUE (number or "").
cell() {
  local row=$1 proxy=$2 decimals=$3 values
  read -r -a values <<<"${VALS[$row|$proxy]:-}"
  CELL_VALUE=$(median "${values[@]}")
  if [ -z "$CELL_VALUE" ]; then
    CELL="-"
    return
  fi
  CELL=$(awk -v v="$CELL_VALUE" -v d="$decimals" 'BEGIN { printf "%.*f", d, v }')
  [ "${ERRORS[$row|$proxy]:-0}" -eq 0 ] || CELL="$CELL (**${ERRORS[$row|$proxy]} errors**)"
}

report_header() {
  local commit dirty="" cpu
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
  git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || dirty=" (src modified)"
  cpu=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
  echo "# cloakroom vs HAProxy vs nginx, one run side by side"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), cloakroom $commit$dirty;"
  echo "$(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'),"
  echo "$(h2load --version | head -1), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}');"
  echo "Linux $(uname -r), $(nproc) cores ($cpu). TLS: $TLS_SEEN."
  echo
  echo "Method: \`bench/compare.sh\`$([ "$QUICK" = 1 ] && echo ' --quick'): every proxy terminates TLS (self-signed P-256),"
  echo "keeps pooled keep-alive connections to 2 upstream servers (one shared nginx, 1 worker,"
  echo "100-byte body), sticks by a cookie, sets X-Forwarded-*, logs no access; one thread each:"
  echo "cloakroom \`workers = 1\` (defaults otherwise: session route with X-Session-Id injection,"
  echo "anomaly = flag, metrics), HAProxy \`nbthread 1\` with \`cookie SRV insert indirect nocache\`,"
  echo "nginx \`worker_processes 1\` with \`hash \$cookie_SRV consistent\` (nginx OSS has no sticky cookie)."
  echo "Proxy pinned to core $PIN_PROXY, clients and upstream to core $PIN_CLIENT. Each figure is the median of"
  echo "$REPS rep(s); a rep starts the proxy afresh, warms up ${WARMUP} s and measures ${DURATION} s. CPU = utime+stime of"
  echo "all the proxy's processes (/proc, 1/$CLK_TCK s ticks) ÷ requests or connections; latency from"
  echo "the client (h2load's per-request log, wrk's histogram); RSS = VmRSS of all the proxy's"
  echo "processes after − before, ÷ connections or sessions. Errors (status >= 400, socket errors)"
  echo "must be 0. Ratio = cloakroom ÷ the best peer (the lowest; for requests/s the highest); below 1"
  echo "= cloakroom is cheaper or faster (for requests/s: above 1). Rows marked all cores run every"
  echo "proxy on every core, unpinned, sharing them with the clients and the upstream."
  echo
}

write_report() {
  local id label decimals kind target hp ng cr best ratio verdict row_errors
  report_header
  echo "| job: figure | HAProxy | nginx | cloakroom | cloakroom ÷ best peer | target |"
  echo "| --- | ---: | ---: | ---: | ---: | --- |"
  while IFS='|' read -r id label decimals kind target; do
    [ -n "${VALS[$id|cloakroom]:-}${VALS[$id|haproxy]:-}" ] || continue
    cell "$id" haproxy "$decimals"; hp=$CELL_VALUE; local c_hp=$CELL
    cell "$id" nginx "$decimals"; ng=$CELL_VALUE; local c_ng=$CELL
    cell "$id" cloakroom "$decimals"; cr=$CELL_VALUE; local c_cr=$CELL
    if [ "$kind" = higher ]; then
      best=$(printf '%s\n' "$hp" "$ng" | sed '/^$/d' | sort -g | tail -1)
    else
      best=$(printf '%s\n' "$hp" "$ng" | sed '/^$/d' | sort -g | head -1)
    fi
    ratio="-"
    [ -n "$best" ] && [ -n "$cr" ] &&
      ratio=$(awk -v a="$cr" -v b="$best" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    row_errors=$((${ERRORS[$id|haproxy]:-0} + ${ERRORS[$id|nginx]:-0} + ${ERRORS[$id|cloakroom]:-0}))
    case $kind in
      ratio) verdict=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print ((r != "-" && r <= t) ? "met" : "missed") }')
        target="≤ $target $verdict" ;;
      higher) verdict=$(awk -v r="$ratio" -v t="$target" 'BEGIN { print ((r != "-" && r >= t) ? "met" : "missed") }')
        target="≥ $target $verdict" ;;
      bytes) verdict=$(awk -v v="$cr" -v t="$target" 'BEGIN { print ((v != "" && v <= t) ? "met" : "missed") }')
        target="≤ $target B $verdict" ;;
      *) target="-" ;;
    esac
    [ "$row_errors" -eq 0 ] || target="$target, **errors**"
    echo "| $label | $c_hp | $c_ng | $c_cr | $ratio | $target |"
  done < <(report_rows)
  echo
  echo "Who kept the cores busy (last rep; % of one core): \"proxy of core $PIN_PROXY · client+upstream of"
  echo "core $PIN_CLIENT\". A core busier than what runs on it had other work on it (the machine is"
  echo "shared); a client near 100 % bounds its row (figures per request stay valid, rates do not)."
  echo
  echo "| job | HAProxy | nginx | cloakroom |"
  echo "| --- | --- | --- | --- |"
  while IFS='|' read -r id label _; do
    [ -n "${BUSY[$id|cloakroom]:-}${BUSY[$id|haproxy]:-}" ] || continue
    echo "| ${label%%(*} | ${BUSY[$id|haproxy]:--} | ${BUSY[$id|nginx]:--} | ${BUSY[$id|cloakroom]:--} |"
  done < <(report_rows)
  echo
  echo "Straight to the upstream (plain HTTP, wrk -c32, no proxy): $BASE_RPS req/s."
  echo "Per-rep figures: [latest-raw.txt](latest-raw.txt)."
}
