-- PUT of a small item over IDS ids (env IDS, default 2000), drawn at random: each request updates one row.
local ids = tonumber(os.getenv("IDS") or "2000")
local body = '{"name":"bench write","price":9.5}'
local headers = {["Content-Type"] = "application/json"}

request = function()
  return wrk.format("PUT", "/items/w-" .. math.random(ids), headers, body)
end
