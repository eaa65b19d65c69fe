-- Shared by the benchmark's wrk scripts (loaded with dofile from
-- $BENCH_LUA_DIR): YCSB's zipfian key law, key names, base64, error
-- counting in response() and a machine-readable result line from done().
--
-- Every setting comes from the environment run.py gives wrk:
--   BENCH_KEYS        number of keys (default 10000)
--   BENCH_THETA       zipfian constant (default 0.99)
--   BENCH_SCRAMBLE    multiplier, coprime with BENCH_KEYS, that spreads the
--                     popular ranks over the key space (YCSB "scrambled")
--   BENCH_SEED        random seed of the key sequence
--   BENCH_EXPECT      a substring every response body must hold (optional)
local M = {}
local bit = require("bit")

function M.env(name, default)
  local value = os.getenv(name)
  if value == nil or value == "" then return default end
  return value
end

function M.num(name, default)
  return tonumber(M.env(name, default))
end

-- The zipfian generator of YCSB (Gray et al., "Quickly generating
-- billion-record synthetic databases", SIGMOD 1994): rank 0 is the most
-- popular item; P(rank i) is proportional to 1 / (i + 1) ^ theta.
function M.zipfian(n, theta)
  local zetan = 0
  for i = 1, n do zetan = zetan + 1 / (i ^ theta) end
  local zeta2 = 1 + 1 / (2 ^ theta)
  local alpha = 1 / (1 - theta)
  local eta = (1 - (2 / n) ^ (1 - theta)) / (1 - zeta2 / zetan)
  local half = 1 + 0.5 ^ theta
  return function()
    local u = math.random()
    local uz = u * zetan
    if uz < 1 then return 0 end
    if uz < half then return 1 end
    local rank = math.floor(n * (eta * u - eta + 1) ^ alpha)
    if rank >= n then rank = n - 1 end
    return rank
  end
end

-- Zipfian key indexes in 0..n-1, popular ranks scattered over the keys.
function M.keys()
  local n = M.num("BENCH_KEYS", 10000)
  local multiplier = M.num("BENCH_SCRAMBLE", 1)
  local rank = M.zipfian(n, M.num("BENCH_THETA", 0.99))
  return function() return (rank() * multiplier) % n end, n
end

function M.key_name(index)
  return string.format("k%08d", index)
end

-- A value of `size` bytes of printable, incompressible-ish text.
function M.value(size)
  local chunk = {}
  for i = 1, 4096 do chunk[i] = string.char(97 + math.random(0, 25)) end
  local block = table.concat(chunk)
  local parts, have = {}, 0
  while have < size do
    local take = math.min(#block, size - have)
    parts[#parts + 1] = block:sub(1, take)
    have = have + take
  end
  return table.concat(parts)
end

local STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function b64(data, alphabet, pad)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    local s1 = bit.band(bit.rshift(n, 18), 63) + 1
    local s2 = bit.band(bit.rshift(n, 12), 63) + 1
    local s3 = bit.band(bit.rshift(n, 6), 63) + 1
    local s4 = bit.band(n, 63) + 1
    out[#out + 1] = alphabet:sub(s1, s1) .. alphabet:sub(s2, s2)
    if b then out[#out + 1] = alphabet:sub(s3, s3) elseif pad then out[#out + 1] = "=" end
    if c then out[#out + 1] = alphabet:sub(s4, s4) elseif pad then out[#out + 1] = "=" end
  end
  return table.concat(out)
end

function M.b64(data) return b64(data, STD, true) end        -- etcd's JSON gateway
function M.b64url(data) return b64(data, URL, false) end    -- the store's cursors

-- Per-thread counters live in globals so that done() can read them with
-- thread:get().
bench_errors = 0
bench_statuses = {}
local expect = nil
local threads = {}

function M.setup(thread)
  threads[#threads + 1] = thread
  thread:set("bench_thread_index", #threads)
end

function M.init()
  expect = M.env("BENCH_EXPECT", nil)
  math.randomseed(M.num("BENCH_SEED", 42) + 7919 * (bench_thread_index or 0))
  for _ = 1, 10 do math.random() end
end

-- Errors are responses outside 2xx, and 2xx bodies without the expected text.
function M.response(status, headers, body)
  bench_statuses[status] = (bench_statuses[status] or 0) + 1
  if status < 200 or status > 299 then
    bench_errors = bench_errors + 1
  elseif expect and not body:find(expect, 1, true) then
    bench_errors = bench_errors + 1
    bench_statuses["miss"] = (bench_statuses["miss"] or 0) + 1
  end
end

function M.done(summary, latency, requests)
  local errors, statuses = 0, {}
  for _, thread in ipairs(threads) do
    errors = errors + (thread:get("bench_errors") or 0)
    local counted = thread:get("bench_statuses") or {}
    for status, count in pairs(counted) do
      statuses[tostring(status)] = (statuses[tostring(status)] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(statuses) do
    parts[#parts + 1] = string.format('"%s":%d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
    '"errors":%d,"statuses":{%s},' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"wrk_status_errors":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    errors, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout, e.status))
end

return M
