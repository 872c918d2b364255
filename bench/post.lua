-- wrk script for bench/serve_bench.py: every request is the same POST with a body read from a file.
-- The harness passes the request through the environment, so one script serves every cell:
--   BENCH_BODY_FILE  path of the body (read in binary mode: V2 bodies carry raw float32 bytes)
--   BENCH_HEADERS    extra headers, one "Name: value" per line (Content-Type, Inference-Header-...)
-- wrk computes Content-Length from the body itself.

local path = os.getenv("BENCH_BODY_FILE")
assert(path, "BENCH_BODY_FILE is not set")
local file = assert(io.open(path, "rb"))
wrk.body = file:read("*a")
file:close()

wrk.method = "POST"
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
   local name, value = line:match("^([^:]+):%s*(.-)%s*$")
   assert(name, "bad header line: " .. line)
   wrk.headers[name] = value
end
