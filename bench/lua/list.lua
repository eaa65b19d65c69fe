-- Listing pages: GET /buckets/{b}/keys?limit=BENCH_LIMIT, each from a cursor
-- just before a uniformly random key, so that pages come from all over the
-- key space.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local bucket = c.env("BENCH_BUCKET", "bench")
local limit = c.num("BENCH_LIMIT", 1000)
local n

setup = c.setup
response = c.response
done = c.done

function init(args)
  c.init()
  n = c.num("BENCH_KEYS", 10000)
end

function request()
  local start = math.random(0, n - 1)
  -- The cursor names the last key of the previous page: keys > it follow.
  local path = string.format("/buckets/%s/keys?limit=%d", bucket, limit)
  if start > 0 then path = path .. "&cursor=" .. c.b64url(c.key_name(start - 1)) end
  return wrk.format("GET", path)
end
