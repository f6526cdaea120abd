-- GET without credentials (the /health baseline).
-- usage: wrk -s scripts/bench/plain_get.lua http://127.0.0.1:PORT/health
dofile("scripts/bench/report.lua")
