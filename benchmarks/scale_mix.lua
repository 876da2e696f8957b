-- wrk script for benchmarks/scale_bench.py: a mixed chat-completions load over P proxies.
--
-- Thread i sends to proxy i (ports from SCALE_PORTS, one per thread), so each proxy process has
-- its own clients, as a sidecar has its app's. A request is, with probability SCALE_HIT_SHARE,
-- one of SCALE_POOL prompts primed beforehand, otherwise a prompt no one asked before. Each
-- answer is counted by its X-LLMCache-Status; done() prints one SCALE_RESULT JSON line.

local threads = {}
local next_index = 1

function setup(thread)
  local ports = {}
  for port in string.gmatch(os.getenv("SCALE_PORTS"), "[^,]+") do ports[#ports + 1] = port end
  thread.addr = wrk.lookup("127.0.0.1", ports[(next_index - 1) % #ports + 1])[1]
  thread:set("id", next_index)
  thread:set("tag", os.getenv("SCALE_TAG"))
  thread:set("share", tonumber(os.getenv("SCALE_HIT_SHARE")))
  thread:set("pool", tonumber(os.getenv("SCALE_POOL")))
  next_index = next_index + 1
  table.insert(threads, thread)
end

-- Globals, so that done() can read them from each thread with thread:get().
sent, hits, misses, other, errors = 0, 0, 0, 0, 0

function init(args)
  math.randomseed(id * 7919)
end

local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench"}

function request()
  sent = sent + 1
  local text
  if math.random() < share then
    text = tag .. " pool " .. math.random(0, pool - 1)
  else
    text = tag .. " unique " .. id .. "-" .. sent
  end
  local body = '{"model":"bench","temperature":0,"messages":[{"role":"user","content":"' .. text .. '"}]}'
  return wrk.format("POST", "/v1/chat/completions", headers, body)
end

function response(status, hdrs, body)
  if status ~= 200 then errors = errors + 1 end
  local s = hdrs["X-LLMCache-Status"] or hdrs["x-llmcache-status"]
  if s == "hit" then hits = hits + 1 elseif s == "miss" then misses = misses + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local h, m, o, e = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    h = h + t:get("hits"); m = m + t:get("misses"); o = o + t:get("other"); e = e + t:get("errors")
  end
  local s = summary.errors
  io.write(string.format(
    'SCALE_RESULT {"hits": %d, "misses": %d, "other": %d, "errors": %d, "socket_errors": %d, ' ..
    '"latency_p50_ms": %.3f, "latency_p99_ms": %.3f}\n',
    h, m, o, e, s.connect + s.read + s.write + s.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
