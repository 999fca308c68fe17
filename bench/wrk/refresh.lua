-- A refresh-token rotation chain: each request spends one token, and the token its answer carries
-- goes to the back of this thread's queue. Env: TOKENS (file, one per line), THREADS (= wrk -t),
-- AUTH (Authorization value). Every non-200 answer or answer without a token counts as bad.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local queue, first, last = {}, 1, 0
bad = 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Authorization"] = os.getenv("AUTH") }

function init(args)
  local threads, i = tonumber(os.getenv("THREADS") or "1"), 0
  for line in io.lines(os.getenv("TOKENS")) do
    if #line > 0 then
      if i % threads == tid then last = last + 1; queue[last] = line end
      i = i + 1
    end
  end
end

function request()
  local token = "none-left"
  if first <= last then token = queue[first]; queue[first] = nil; first = first + 1 end
  return wrk.format("POST", nil, headers, "grant_type=refresh_token&refresh_token=" .. token)
end

function response(status, headers, body)
  local token = status == 200 and body:match('"refresh_token":%s*"([^"]+)"')
  if token then last = last + 1; queue[last] = token else bad = bad + 1 end
end
