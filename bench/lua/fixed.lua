-- One fixed request, the URL's (the hello-world ceiling): only counts
-- errors and reports like the other scripts.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

setup = c.setup
response = c.response
done = c.done

function init(args)
  c.init()
end
