-- Form POSTs taken in turn from BODIES_FILE (one urlencoded body per line), so that the requests
-- in flight are different logins (identical concurrent logins share one argon2 run, which would
-- measure that sharing instead of the login). Env: BODIES_FILE, AUTH (Authorization value).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local bodies, next_body = {}, 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local auth = os.getenv("AUTH")
if auth and #auth > 0 then headers["Authorization"] = auth end

function init(args)
  for line in io.lines(os.getenv("BODIES_FILE")) do
    if #line > 0 then table.insert(bodies, line) end
  end
  next_body = tid or 0  -- threads start at different places in the list
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[next_body])
end
