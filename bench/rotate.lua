-- wrk script: every request carries the next credential of a file, one a line,
-- cycling; requests are built once, up front, so rotating costs wrk nothing.
--   BENCH_TOKENS  the file
--   BENCH_HEADER  header name (default Authorization)
--   BENCH_PREFIX  value prefix (default "Bearer ")
--   BENCH_START   index of the first credential (0-based, taken modulo the count)
--   BENCH_FIXED_HEADER, BENCH_FIXED_VALUE  a header every request carries as is
-- done() prints one line: WRK {json}.

local file = os.getenv("BENCH_TOKENS")
local header = os.getenv("BENCH_HEADER") or "Authorization"
local prefix = os.getenv("BENCH_PREFIX") or "Bearer "
local fixed_header = os.getenv("BENCH_FIXED_HEADER") or ""
local fixed_value = os.getenv("BENCH_FIXED_VALUE") or ""

local requests = {}
local next_request = 0

function init(args)
  for line in io.lines(file) do
    if #line > 0 then
      local headers = { [header] = prefix .. line }
      if #fixed_header > 0 then
        headers[fixed_header] = fixed_value
      end
      requests[#requests + 1] = wrk.format("GET", "/data", headers)
    end
  end
  next_request = tonumber(os.getenv("BENCH_START") or "0") % #requests
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function done(summary, latency)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,' ..
    '"errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
