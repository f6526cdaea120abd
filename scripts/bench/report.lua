-- Shared by the bench scripts (loaded with dofile): after a run, prints one
-- machine-readable line that scripts/bench.sh parses. Latencies in microseconds.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d "
         .. "status_errors=%d socket_errors=%d timeouts=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.status, e.connect + e.read + e.write, e.timeout))
end
