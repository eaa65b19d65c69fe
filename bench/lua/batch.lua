-- Batches: POST /buckets/{b}/batch of BENCH_BATCH consecutive keys (distinct,
-- as a batch needs) from a uniformly random start (a zipfian one would have
-- the batches of all connections write the same keys, and wait for each
-- other's locks): gets when BENCH_READ is 1, else puts
-- of BENCH_VALUE_BYTES text values, with ?r= / ?w= of BENCH_R / BENCH_W.  An
-- item that failed (a "code" in the answer) counts as an error.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local bucket = c.env("BENCH_BUCKET", "bench")
local size = c.num("BENCH_BATCH", 100)
local reads = c.num("BENCH_READ", 1) >= 1
local r = c.env("BENCH_R", nil)
local w = c.env("BENCH_W", nil)
local value_bytes = c.num("BENCH_VALUE_BYTES", 1024)
local headers = {["Content-Type"] = "application/json"}
local path = "/buckets/" .. bucket .. "/batch"
local n, value

setup = c.setup
done = c.done

function init(args)
  c.init()
  n = c.num("BENCH_KEYS", 10000)
  if reads then
    if r then path = path .. "?r=" .. r end
  else
    value = c.value(value_bytes)
    if w then path = path .. "?w=" .. w end
  end
end

function request()
  local start = math.random(0, n - 1)
  local items = {}
  for i = 0, size - 1 do
    local key = c.key_name((start + i) % n)
    if reads then
      items[#items + 1] = '{"op":"get","key":"' .. key .. '"}'
    else
      items[#items + 1] = '{"op":"put","key":"' .. key .. '","value":"' .. value .. '"}'
    end
  end
  return wrk.format("POST", path, headers, '{"operations":[' .. table.concat(items, ",") .. ']}')
end

function response(status, headers, body)
  if status == 200 and body:find('"code"', 1, true) then status = 599 end   -- an item failed
  c.response(status, headers, body)
end
