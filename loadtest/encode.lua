-- wrk script: POST texts never sent before, read from a pool file, to the URL's path.
-- Environment: WRK_TEXTS (pool: one JSON-escaped text per line), WRK_BATCH (texts per
-- request, default 1), WRK_RESULT (where done() writes the run's figures as JSON),
-- WRK_FIELD (the body's field for the texts, default "inputs"), WRK_MODEL (when set and
-- not empty, the body names this model first, as OpenAI-style routes need).

local texts = {}
local next_index = 1
local batch = tonumber(os.getenv("WRK_BATCH") or "1")
local model = os.getenv("WRK_MODEL") or ""
local body_head = '{"' .. (os.getenv("WRK_FIELD") or "inputs") .. '":'
if model ~= "" then
  body_head = '{"model":"' .. model .. '",' .. body_head:sub(2)
end
wraps = 0 -- global: done() reads it from each thread
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("WRK_TEXTS")) do
    texts[#texts + 1] = line
  end
end

local function next_text()
  if next_index > #texts then
    -- Pool exhausted: reuse it with a round marker so every text stays unique.
    next_index = 1
    wraps = wraps + 1
  end
  local text = texts[next_index]
  next_index = next_index + 1
  if wraps > 0 then
    return "round " .. wraps .. " " .. text
  end
  return text
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  local body
  if batch == 1 then
    body = body_head .. '"' .. next_text() .. '"}'
  else
    local parts = {}
    for i = 1, batch do
      parts[i] = next_text()
    end
    body = body_head .. '["' .. table.concat(parts, '","') .. '"]}'
  end
  -- nil path: wrk.path, the path of the URL on wrk's command line.
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local total_wraps = 0
  for _, thread in ipairs(threads) do
    total_wraps = total_wraps + (thread:get("wraps") or 0)
  end
  local errors = summary.errors
  local out = assert(io.open(os.getenv("WRK_RESULT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "pool_wraps": %d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), total_wraps
  ))
  out:close()
end
