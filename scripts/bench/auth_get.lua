-- GET with a bearer token from the environment.
-- usage: BENCH_TOKEN=<access token> wrk -s scripts/bench/auth_get.lua http://127.0.0.1:PORT/api/v1/auth/me
dofile("scripts/bench/report.lua")

local token = os.getenv("BENCH_TOKEN")
if token == nil or token == "" then
   error("BENCH_TOKEN is not set")
end
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. token
