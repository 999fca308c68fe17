-- GET of one URL (the login page: /authorize without a session), every answer checked: anything
-- but 200 with a form in it counts (statuses from 400 up in wrk's own count, the rest in `bad`).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
bad = 0
local shown = 0

function response(status, headers, body)
  if status == 200 and body:find('name="csrf_token"', 1, true) then return end
  if status < 400 then bad = bad + 1 end
  shown = shown + 1
  if shown <= 3 then io.stderr:write("login_page: " .. status .. " " .. body:sub(1, 200) .. "\n") end
end
