-- POST /api/v1/auth/login with the credentials from the environment.
-- usage: BENCH_USER=... BENCH_PASSWORD=... wrk -s scripts/bench/login.lua http://127.0.0.1:PORT/api/v1/auth/login
dofile("scripts/bench/report.lua")

local user = os.getenv("BENCH_USER")
local password = os.getenv("BENCH_PASSWORD")
if user == nil or password == nil then
   error("BENCH_USER and BENCH_PASSWORD must be set")
end
-- The bench credentials are plain ASCII without quotes or backslashes.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"username":"%s","password":"%s"}', user, password)
