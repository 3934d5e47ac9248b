-- One write, repeated: PUT of the same small item (the version rises on every request).
wrk.method = "PUT"
wrk.body = '{"name":"bench write","price":9.5}'
wrk.headers["Content-Type"] = "application/json"
