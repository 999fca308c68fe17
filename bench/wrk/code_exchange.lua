-- The authorization-code grant, one code per request: "code verifier" pairs from CODES_FILE, each
-- sent once, in order (never a code twice). Body: grant_type=authorization_code, code,
-- redirect_uri (REDIRECT_URI, already urlencoded), code_verifier; AUTH is the Authorization
-- header (client_secret_basic). An answer counts as good only if it is 200 with an id_token and a
-- refresh_token in it: wrk counts statuses from 400 up itself, `bad` everything else that is not
-- a good answer. Once the codes run out the thread stops; wrk still waits out -d and divides by
-- it, so the caller sizes the pool to last and discards a run that ran out. Single-threaded (-t1).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local codes, verifiers, next_code = {}, {}, 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Authorization"] = os.getenv("AUTH") }
local prefix = "grant_type=authorization_code&redirect_uri=" .. os.getenv("REDIRECT_URI") .. "&code="
local path = os.getenv("TOKEN_PATH") or "/token"
bad = 0

function init(args)
  for line in io.lines(os.getenv("CODES_FILE")) do
    local code, verifier = line:match("^(%S+) (%S+)$")
    if code then table.insert(codes, code); table.insert(verifiers, verifier) end
  end
end

function request()
  next_code = next_code + 1
  if next_code > #codes then
    wrk.thread:stop()
    return wrk.format("GET", "/.well-known/openid-configuration")  -- written, never read
  end
  return wrk.format("POST", path, headers, prefix .. codes[next_code] .. "&code_verifier=" .. verifiers[next_code])
end

local shown = 0
function response(status, hdrs, body)
  if status == 200 and body:find('"id_token"', 1, true) and body:find('"refresh_token"', 1, true) then return end
  if status < 400 then bad = bad + 1 end
  shown = shown + 1
  if shown <= 3 then io.stderr:write("code_exchange: " .. status .. " " .. body:sub(1, 200) .. "\n") end
end
