-- POST /login from one browser (COOKIE: its Cookie header), the forms taken in turn from
-- BODIES_FILE (one urlencoded body per line: different users, so that no two logins in flight
-- share one argon2 run). A good answer is the 303 back to the client with a code in Location;
-- statuses from 400 up are in wrk's own count, anything else in `bad`.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local bodies, next_body = {}, 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Cookie"] = os.getenv("COOKIE") }
bad = 0
local shown = 0

function init(args)
  for line in io.lines(os.getenv("BODIES_FILE")) do
    if #line > 0 then table.insert(bodies, line) end
  end
  next_body = tid or 0
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/login", headers, bodies[next_body])
end

function response(status, hdrs, body)
  local location = hdrs["Location"] or hdrs["location"] or ""
  if status == 303 and location:find("[?&]code=") then return end
  if status < 400 then bad = bad + 1 end
  shown = shown + 1
  if shown <= 3 then io.stderr:write("login_post: " .. status .. " " .. location:sub(1, 200) .. " " .. body:sub(1, 200) .. "\n") end
end
