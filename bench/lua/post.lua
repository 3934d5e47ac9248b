-- POST /items of a small item (the service makes up its id); with env KEYED=1, each with a new
-- Idempotency-Key (unique per run: the start time, a random number and a counter).
local keyed = os.getenv("KEYED") == "1"
local body = '{"name":"bench create","price":9.5}'
local prefix = os.time() .. "-" .. math.random(1000000000) .. "-"
local n = 0

request = function()
  local headers = {["Content-Type"] = "application/json"}
  if keyed then
    n = n + 1
    headers["Idempotency-Key"] = prefix .. n
  end
  return wrk.format("POST", "/items", headers, body)
end
