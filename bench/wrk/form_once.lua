-- Form POSTs from BODIES_FILE (one urlencoded body per line), each sent once, in order: for
-- requests that must never repeat (a client assertion's jti is accepted once; a copy would be
-- refused, and count against the client's throttle). Once the bodies run out the thread stops;
-- wrk still waits out -d and divides by it, so the caller sizes the pool to last and discards a
-- run that ran out. Single-threaded (-t1). Env: BODIES_FILE.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local bodies, next_body = {}, 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

function init(args)
  for line in io.lines(os.getenv("BODIES_FILE")) do
    if #line > 0 then table.insert(bodies, line) end
  end
end

function request()
  next_body = next_body + 1
  if next_body > #bodies then
    wrk.thread:stop()
    return wrk.format("GET", "/healthz")  -- written, never read
  end
  return wrk.format("POST", nil, headers, bodies[next_body])
end
