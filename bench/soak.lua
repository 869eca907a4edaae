-- wrk script for bench/soak.sh: sessions created, used and logged out, at a paced rate.
-- Each wrk thread keeps one session at a time: GET /login?user=... (the app logs it in),
-- USES requests carrying its cookie, GET /logout (the cookie is expired), then an
-- anonymous request starts the next one. Every connection waits SOAK_DELAY_MS between
-- requests, so the rate is about connections x 1000 / SOAK_DELAY_MS per second.
-- done() prints one "SOAK ..." line and one "FAIL count reason" line per failure reason.
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "20")
local uses = 20
local threads = {}
local counter = 0
cookie = nil
step = 0
id = 0
fails = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function delay()
  return delay_ms
end

function request()
  step = step + 1
  local phase = step % (uses + 2)
  local path
  if phase == 0 then
    path = "/login?user=soak" .. id .. "-" .. step
  elseif phase == uses + 1 then
    path = "/logout"
  else
    path = "/item/" .. phase
  end
  local headers = { Host = "localhost" }
  if cookie then headers["Cookie"] = cookie end
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  local set = headers["set-cookie"] or headers["Set-Cookie"]
  if set then
    local pair = set:match("^([^;]*)")
    if set:match("Max%-Age=0") or pair:match("=$") then cookie = nil else cookie = pair end
  end
  if status >= 400 then
    local reason = status .. " " .. string.gsub(string.sub(body or "", 1, 60), "%s+", " ")
    fails[reason] = (fails[reason] or 0) + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
  for _, thread in ipairs(threads) do
    local f = thread:get("fails")
    if f then
      for reason, count in pairs(f) do io.write(string.format("FAIL %d %s\n", count, reason)) end
    end
  end
end
