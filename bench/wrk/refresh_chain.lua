-- wrk: refresh_token grant walking rotation chains. Every request spends one refresh token from
-- this thread's queue; the refresh token in a 200 answer goes back on the queue. Seed tokens come
-- from TOKENS_FILE (one per line), dealt out over WRK_THREADS threads. AUTH is the Authorization
-- header. Prints one line "WRKJSON {...}" at the end.
local threads = {}
local queue, head, tail = {}, 1, 0
bad, starved = 0, 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Authorization"] = os.getenv("AUTH") }

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(os.getenv("WRK_THREADS") or "1")
  local i = 0
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    if #line > 0 then
      if i % nthreads == tid then tail = tail + 1; queue[tail] = line end
      i = i + 1
    end
  end
end

function request()
  local token = "starved"
  if head <= tail then
    token = queue[head]; queue[head] = nil; head = head + 1
  else
    starved = starved + 1
  end
  return wrk.format("POST", "/token", headers, "grant_type=refresh_token&refresh_token=" .. token)
end

function response(status, hdrs, body)
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if token then tail = tail + 1; queue[tail] = token; return end
  end
  bad = bad + 1
  if bad <= 3 then io.stderr:write("refresh_chain: " .. status .. " " .. body:sub(1, 200) .. "\n") end
end

function done(summary, latency, requests)
  local failed, hungry = 0, 0
  for _, t in ipairs(threads) do
    failed = failed + (tonumber(t:get("bad")) or 0)
    hungry = hungry + (tonumber(t:get("starved")) or 0)
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.3f,"non2xx":%d,"socket_errors":%d,"bad":%d,"starved":%d,' ..
    '"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    failed, hungry, latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
