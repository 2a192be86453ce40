-- wrk script of the soak (bench/soak.py): mixed traffic, answers counted per kind.
--
-- SOAK_MIX names a file of tab-separated lines:
--   schedule <TAB> kind,kind,...                   the order kinds are sent in, cycled
--   <kind> <TAB> METHOD <TAB> path [<TAB> header <TAB> value]   one request of a kind
-- Each kind cycles through its own requests. SOAK_DELAY_MS paces every connection.
--
-- Run with as many threads as connections (-tN -cN): each thread then has one
-- connection, which waits for an answer before it sends again, so the answer a
-- thread gets is to the request it sent last. done() prints one line:
--   WRK {"requests":…,"errors":…,"timeouts":…,"answers":{"<kind> <status>":count,…}}

local pools, schedule, cursors = {}, {}, {}
local step, sent_kind = 0, nil
local pause = tonumber(os.getenv("SOAK_DELAY_MS") or "0")
-- Read by done() through thread:get (flat tables only).
answers = {}

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_index", #threads)
end

function init(args)
  local order
  for line in io.lines(os.getenv("SOAK_MIX")) do
    local fields = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do
      fields[#fields + 1] = field
    end
    if fields[1] == "schedule" then
      order = fields[2]
    elseif #fields >= 3 then
      local kind, headers = fields[1], {}
      if fields[4] and fields[4] ~= "" then
        headers[fields[4]] = fields[5]
      end
      pools[kind] = pools[kind] or {}
      table.insert(pools[kind], wrk.format(fields[2], fields[3], headers))
    end
  end
  for kind in order:gmatch("[^,]+") do
    schedule[#schedule + 1] = kind
  end
  -- Threads start at different places, so they do not send the same credential in step.
  local offset = (thread_index or 1) * 7919
  step = offset % #schedule
  for kind, pool in pairs(pools) do
    cursors[kind] = offset % #pool
  end
end

function request()
  step = step % #schedule + 1
  local kind = schedule[step]
  local pool = pools[kind]
  cursors[kind] = cursors[kind] % #pool + 1
  sent_kind = kind
  return pool[cursors[kind]]
end

function delay()
  return pause
end

function response(status, headers, body)
  local key = sent_kind .. " " .. status
  answers[key] = (answers[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("answers")) do
      merged[key] = (merged[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(merged) do
    parts[#parts + 1] = string.format('"%s":%d', key, count)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"answers":{%s}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ",")))
end
