-- etcd's HTTP/JSON gateway (v3 API) with the same keys, values and zipfian
-- law as kv.lua: POST /v3/kv/range with probability BENCH_READ, else
-- POST /v3/kv/put.  Keys are "{bucket}/{key}", base64 in the JSON.
-- BENCH_MODE=list reads pages instead: a range of BENCH_LIMIT keys (keys
-- only) from a uniformly random key to the end of the bucket's prefix.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local bucket = c.env("BENCH_BUCKET", "bench")
local read_fraction = c.num("BENCH_READ", 1)
local value_bytes = c.num("BENCH_VALUE_BYTES", 1024)
local mode = c.env("BENCH_MODE", "kv")
local limit = c.num("BENCH_LIMIT", 1000)
local headers = {["Content-Type"] = "application/json"}
local next_key, n, value64, range_end
local cache = {}

setup = c.setup
response = c.response
done = c.done

local function key64(index)
  local k = cache[index]
  if not k then
    k = c.b64(bucket .. "/" .. c.key_name(index))
    cache[index] = k
  end
  return k
end

function init(args)
  c.init()
  next_key, n = c.keys()
  if read_fraction < 1 then value64 = c.b64(c.value(value_bytes)) end
  range_end = c.b64(bucket .. "0")  -- "/" + 1: the end of the prefix "{bucket}/"
end

function request()
  if mode == "list" then
    local body = string.format('{"key":"%s","range_end":"%s","limit":%d,"keys_only":true}',
                               key64(math.random(0, n - 1)), range_end, limit)
    return wrk.format("POST", "/v3/kv/range", headers, body)
  end
  local key = key64(next_key())
  if read_fraction >= 1 or math.random() < read_fraction then
    return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. key .. '"}')
  end
  return wrk.format("POST", "/v3/kv/put", headers, '{"key":"' .. key .. '","value":"' .. value64 .. '"}')
end
