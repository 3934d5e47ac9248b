-- Mixed workload for wrk: reads of items chosen by a Zipf law (s = 1.0) over ITEMS ids, and WRITE_PCT%
-- writes (PUT) of ids chosen the same way. ids are "item-<rank>" (the bench seeds them so).
local items = tonumber(os.getenv("ITEMS") or "100000")
local write_pct = tonumber(os.getenv("WRITE_PCT") or "5")
local cdf = {}

local function setup_cdf()
  local total = 0
  for k = 1, items do total = total + 1 / k end
  local acc = 0
  for k = 1, items do
    acc = acc + (1 / k) / total
    cdf[k] = acc
  end
end

local function zipf()
  local u = math.random()
  local lo, hi = 1, items
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end

init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  setup_cdf()
end

request = function()
  local id = "item-" .. zipf()
  if math.random(100) <= write_pct then
    return wrk.format("PUT", "/items/" .. id, {["Content-Type"] = "application/json"},
                      '{"name":"' .. id .. '","price":' .. math.random(1000) .. '}')
  end
  return wrk.format("GET", "/items/" .. id)
end
