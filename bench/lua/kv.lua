-- The store's key API, YCSB style: GET /buckets/{b}/keys/{k}?r=... with
-- probability BENCH_READ, else PUT ...?w=... of a BENCH_VALUE_BYTES value.
-- Keys follow the zipfian law of common.lua.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local bucket = c.env("BENCH_BUCKET", "bench")
local read_fraction = c.num("BENCH_READ", 1)
local r = c.env("BENCH_R", nil)
local w = c.env("BENCH_W", nil)
local value_bytes = c.num("BENCH_VALUE_BYTES", 1024)
local next_key, value
local put_headers = {["Content-Type"] = "application/octet-stream"}
local prefix = "/buckets/" .. bucket .. "/keys/"
local get_query = r and ("?r=" .. r) or ""
local put_query = w and ("?w=" .. w) or ""

setup = c.setup
response = c.response
done = c.done

function init(args)
  c.init()
  next_key = c.keys()
  if read_fraction < 1 then value = c.value(value_bytes) end
end

function request()
  local path = prefix .. c.key_name(next_key())
  if read_fraction >= 1 or math.random() < read_fraction then
    return wrk.format("GET", path .. get_query)
  end
  return wrk.format("PUT", path .. put_query, put_headers, value)
end
