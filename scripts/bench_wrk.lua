-- Chat completions for wrk, driven by scripts/bench_wrk.py (one wrk run per cell).
--
--   wrk -t1 -c10 -d5s --latency -s scripts/bench_wrk.lua URL -- MODE SEED EXPECT [PROMPT]
--
-- MODE   random: a new prompt per request (12 random words and a random number), so
--                every request through kallm is a miss;
--        fixed:  PROMPT on every request (the driver has cached it: an exact hit).
-- SEED   a number the driver changes per run: a rerun of a miss cell must not send the
--        prompts an earlier run stored. Each thread adds its own id to it.
-- EXPECT the X-Kallm-Cache header every answer should carry: HIT, MISS, or - for none.
--
-- done() writes one line, "WRK_JSON {...}": requests, duration, socket errors, non-200
-- answers, answers with another cache header, latency percentiles in microseconds.

local WORDS = {
  "apple", "river", "engine", "garden", "silver", "window", "planet", "candle",
  "forest", "bridge", "rocket", "pencil", "castle", "ladder", "harbor", "mirror",
  "violin", "desert", "blanket", "compass", "lantern", "meadow", "thunder", "saddle",
  "kitchen", "glacier", "tunnel", "orchard", "feather", "anchor", "canyon", "pillow",
  "volcano", "marble", "lobster", "carpet", "helmet", "jungle", "trumpet", "basket",
  "cabinet", "dolphin", "furnace", "giraffe", "hammock", "igloo", "jacket", "kettle",
  "lemon", "magnet", "napkin", "oyster", "parrot", "quilt", "radish", "spinach",
  "teapot", "umbrella", "vessel", "walnut", "yogurt", "zipper", "almond", "bicycle",
  "cactus", "diamond", "eclipse", "falcon", "goblet", "hazel", "island", "jigsaw",
  "koala", "lagoon", "mango", "nectar", "olive", "pepper", "quartz", "raven",
  "sapphire", "tulip", "unicorn", "velvet", "wizard", "xylophone", "yacht", "zebra",
  "asphalt", "barley", "copper", "drizzle", "ember", "fossil", "granite", "horizon",
}
local MODEL = "gpt-4o-mini"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

local threads = {}
local expect = "-"
local fixed_request = nil

-- Per thread; done() reads them with thread:get, so they are globals.
non_200 = 0
wrong_cache = 0
first_non_200 = ""

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function chat_request(content)
  local body = '{"model":"' .. MODEL .. '","messages":[{"role":"user","content":'
    .. json_string(content) .. "}]}"
  return wrk.format(nil, nil, nil, body)
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  local mode = args[1] or "random"
  math.randomseed((tonumber(args[2]) or os.time()) + 7919 * (id or 0))
  expect = args[3] or "-"
  if mode == "fixed" then
    fixed_request = chat_request(args[4] or "What is DNS?")
  end
end

function request()
  if fixed_request then
    return fixed_request
  end
  local words = {}
  for i = 1, 12 do
    words[i] = WORDS[math.random(#WORDS)]
  end
  return chat_request(table.concat(words, " ") .. " " .. math.random(1, 1000000000))
end

function response(status, headers, body)
  if status ~= 200 then
    non_200 = non_200 + 1
    if first_non_200 == "" then
      first_non_200 = status .. " " .. (body or ""):sub(1, 200)
    end
  end
  if (headers["X-Kallm-Cache"] or "-") ~= expect then
    wrong_cache = wrong_cache + 1
  end
end

function done(summary, latency, requests)
  local bad, wrong, first = 0, 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non_200") or 0)
    wrong = wrong + (thread:get("wrong_cache") or 0)
    if first == "" then
      first = thread:get("first_non_200") or ""
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"timeout":%d,"status_errors":%d,"non_200":%d,"wrong_cache":%d,"first_non_200":%s,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    bad, wrong, json_string(first), latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max
  ))
end
