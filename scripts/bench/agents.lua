-- wrk script: agents fetching and selling tickets, each with its own token.
--
--   wrk -t T -c C -d D -s agents.lua URL -- MODE TOKENS T CAPACITY DONE_DIR [THINK_MS]
--
-- MODE      fetch  every request of an agent is a fetch (GET assign)
--           topup  an agent fetches, sells its oldest ticket, fetches again (a top-up),
--                  and so on; seeded one short of capacity, its first fetch tops up too
--           cold   every agent fetches exactly once; a thread whose agents all have
--                  their answer writes DONE_DIR/thread-<n> and stops
-- TOKENS    file of lines "<agent id> <access token>"
-- T         the wrk thread count (thread n drives the agents on lines n, n+T, n+2T, ...)
-- CAPACITY  tickets per agent: a fetch answered with fewer counts as "short"
-- THINK_MS  fetch and topup: a connection waits this long after each answer before
--           its next request (an agent at work between requests); 0, the default,
--           keeps every connection busy: the server runs at its maximum
--
-- Each agent has at most one request in flight, like a person at a desk; wrk's
-- connections take whichever agent is ready next. The agent of a response is
-- read from the body ("agent_id"), so the script needs one agent more per thread
-- than that thread has connections (the runner sees to it).
--
-- Latency is measured here (request written -> response parsed, CLOCK_MONOTONIC
-- through LuaJIT's ffi) per kind of request, so a top-up's latency is not mixed
-- with the sale before it. done() writes key=value lines to $BENCH_WRK_OUT.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local ASSIGN = "/api/agent/tickets/assign/"
local SELL = "/api/agent/tickets/sell/"

-- main state: one handle per thread, for done()
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

-- thread state ------------------------------------------------------------
local mode, capacity, done_dir, think_ms
local agents = {} -- this thread's agents
local by_id = {}
local ready, head, tail = {}, 1, 0 -- FIFO of agents with nothing in flight
local verify_pending = false
local claimed, issued, answered = 0, 0, 0

-- Read by done() through thread:get().
lat_assign, lat_sell = {}, {}
stats = { short = 0, lost = 0, starved = 0, bad_assign = 0, bad_sell = 0, first = 0, last = 0 }

local function push(agent)
  tail = tail + 1
  ready[tail] = agent
end

local function pop()
  if head > tail then
    return nil
  end
  local agent = ready[head]
  ready[head] = nil
  head = head + 1
  return agent
end

function init(args)
  mode, capacity, done_dir = args[1], tonumber(args[4]), args[5]
  think_ms = tonumber(args[6] or "0")
  local nthreads = tonumber(args[3])
  local line_no = 0
  for line in io.lines(args[2]) do
    if line_no % nthreads == tid then
      local id, token = line:match("^(%d+) (%S+)$")
      local agent = {
        id = tonumber(id),
        headers = { Authorization = "Bearer " .. token },
        sent = 0,
      }
      agents[#agents + 1] = agent
      by_id[agent.id] = agent
      push(agent)
    end
    line_no = line_no + 1
  end
  -- wrk calls request() once on thread 0 before the run, only to check its
  -- syntax; that request is never sent, so it must not take an agent.
  verify_pending = tid == 0
end

function delay()
  -- cold: every agent once; then the connection idles until the thread stops.
  if mode == "cold" then
    if claimed >= #agents then
      return 3600000
    end
    claimed = claimed + 1
    return 0
  end
  return think_ms
end

function request()
  if verify_pending then
    verify_pending = false
    return wrk.format("GET", ASSIGN, { Authorization = "Bearer x" })
  end
  local agent = pop()
  if agent == nil then
    -- More connections than idle agents: never meant to happen (see above).
    stats.starved = stats.starved + 1
    return wrk.format("GET", "/healthz")
  end
  local now = now_us()
  if stats.first == 0 then
    stats.first = now
  end
  agent.sent = now
  issued = issued + 1
  if agent.ticket then
    agent.kind = "sell"
    return wrk.format("POST", SELL .. agent.ticket .. "/", agent.headers, "")
  end
  agent.kind = "assign"
  return wrk.format("GET", ASSIGN, agent.headers)
end

function response(status, headers, body)
  local now = now_us()
  local agent = by_id[tonumber(body:match('"agent_id":%s*(%d+)'))]
  if agent == nil then
    -- An error body, or an empty holding: the agent cannot be told, so it
    -- drops out of the run.
    stats.lost = stats.lost + 1
    return
  end
  local micros = now - agent.sent
  stats.last = now
  answered = answered + 1
  if agent.kind == "sell" then
    lat_sell[#lat_sell + 1] = micros
    if status ~= 200 then
      stats.bad_sell = stats.bad_sell + 1
    end
    agent.ticket = nil
  else
    lat_assign[#lat_assign + 1] = micros
    if status ~= 200 then
      stats.bad_assign = stats.bad_assign + 1
    end
    local held = 0
    for _ in body:gmatch('"id":') do
      held = held + 1
    end
    if held < capacity then
      stats.short = stats.short + 1
    end
    if mode == "topup" then
      agent.ticket = tonumber(body:match('"id":%s*(%d+)')) -- the oldest it holds
    end
  end
  if mode == "cold" then
    if answered >= #agents then
      local marker = io.open(done_dir .. "/thread-" .. tid, "w")
      marker:write(answered, "\n")
      marker:close()
      wrk.thread:stop()
    end
    return
  end
  push(agent)
end

-- main state, after the run -------------------------------------------------
local function percentile(sorted, p)
  if #sorted == 0 then
    return 0
  end
  local rank = math.max(1, math.ceil(p / 100 * #sorted))
  return sorted[rank]
end

local function emit(out, name, values)
  table.sort(values)
  local sum = 0
  for _, v in ipairs(values) do
    sum = sum + v
  end
  out:write(name, "_count=", #values, "\n")
  out:write(name, "_p50_us=", percentile(values, 50), "\n")
  out:write(name, "_p90_us=", percentile(values, 90), "\n")
  out:write(name, "_p99_us=", percentile(values, 99), "\n")
  out:write(name, "_max_us=", values[#values] or 0, "\n")
  out:write(name, "_mean_us=", #values > 0 and sum / #values or 0, "\n")
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_WRK_OUT"), "w"))
  out:write("requests=", summary.requests, "\n")
  out:write("duration_us=", summary.duration, "\n")
  for _, key in ipairs({ "connect", "read", "write", "status", "timeout" }) do
    out:write("errors_", key, "=", summary.errors[key], "\n")
  end
  out:write("wrk_p50_us=", latency:percentile(50), "\n")
  out:write("wrk_p99_us=", latency:percentile(99), "\n")
  local assign, sell, all = {}, {}, {}
  local totals = { short = 0, lost = 0, starved = 0, bad_assign = 0, bad_sell = 0 }
  local first, last = math.huge, 0
  for _, thread in ipairs(threads) do
    for _, v in ipairs(thread:get("lat_assign")) do
      assign[#assign + 1] = v
      all[#all + 1] = v
    end
    for _, v in ipairs(thread:get("lat_sell")) do
      sell[#sell + 1] = v
      all[#all + 1] = v
    end
    local s = thread:get("stats")
    for key in pairs(totals) do
      totals[key] = totals[key] + s[key]
    end
    if s.first > 0 then
      first = math.min(first, s.first)
    end
    last = math.max(last, s.last)
  end
  for key, value in pairs(totals) do
    out:write(key, "=", value, "\n")
  end
  out:write("span_us=", last > 0 and last - first or 0, "\n")
  emit(out, "assign", assign)
  emit(out, "sell", sell)
  emit(out, "all", all)
  out:close()
end
