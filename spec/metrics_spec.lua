-- Metrics: pool:metrics() and peerpool.metrics() (Prometheus text exposition, checked by
-- promtool), the /metrics endpoint (peerpool.serve_metrics and `peerpool --metrics`) against
-- well-behaved and hostile clients, and a real Prometheus server scraping it.
local H = require "spec.support.helpers"
local T = require "spec.support.host_helper"
local uv = require "luv"
local peerpool = require "peerpool"

local test, wait_until = H.test, H.wait_until

-- ---- helpers ------------------------------------------------------------------------------

-- The exposition parsed: families[name] = { help = n, type = kind, samples = {...} } (a
-- sample's family is the name without _sum/_count/_bucket for summaries and histograms), and
-- the samples in order.
local function parse(text)
  local families, samples, order = {}, {}, {}
  local function fam(name)
    if not families[name] then
      families[name] = { help = 0, samples = {} }
      order[#order + 1] = name
    end
    return families[name]
  end
  for line in text:gmatch("[^\n]+") do
    local hname = line:match("^# HELP (%S+) ")
    local tname, kind = line:match("^# TYPE (%S+) (%S+)$")
    if hname then
      local f = fam(hname)
      f.help = f.help + 1
    elseif tname then
      fam(tname).type = kind
    else
      local name, labels, value = line:match("^([%w_]+)(%b{}) (%S+)$")
      if not name then name, value = line:match("^([%w_]+) (%S+)$") end
      assert.is_truthy(name, "a sample line: " .. line)
      local l = {}
      for k, v in (labels or ""):gmatch('([%w_]+)="(.-[^\\]?)"') do l[k] = v end
      local s = { name = name, labels = labels or "", l = l, value = tonumber(value) }
      samples[#samples + 1] = s
      local base = families[name] and name or name:match("^(.*)_sum$") or
        name:match("^(.*)_count$") or name:match("^(.*)_bucket$") or name
      assert.is_truthy(families[base], "a sample after its family's TYPE: " .. line)
      table.insert(families[base].samples, s)
    end
  end
  return families, samples, order
end

-- The value of the sample `name` whose labels include every pair of `want`.
local function value(samples, name, want)
  for _, s in ipairs(samples) do
    if s.name == name then
      local ok = true
      for k, v in pairs(want or {}) do
        if s.l[k] ~= v then ok = false end
      end
      if ok then return s.value end
    end
  end
  return nil
end

-- A pool with the line server as its peer, and one PING through it.
local function busy_pool(env, opts)
  local pool, srv = env:pool_with("line", opts)
  local conn = assert(pool:acquire(srv.addr))
  conn:send("PING\r\n")
  assert.equal("+PONG", conn:receive())
  conn:release()
  return pool, srv
end

local PROMTOOL = H.PROMTOOL
local PROMETHEUS = io.popen("command -v prometheus"):read("l")

local promtool = H.promtool

-- The fds this process has open.
local function fd_count() return T.fd_count("self") end

-- An HTTP exchange on the loop: send `request` (a string, or a list of pieces written
-- `gap_ms` apart) to 127.0.0.1:port and read until the server closes or `until_fn(raw)` says
-- the answer is whole. Returns { raw, status, headers, body, closed, err }.
local function http(port, request, opts)
  opts = opts or {}
  local co = assert(coroutine.running())
  local tcp = uv.new_tcp()
  local res = { raw = "" }
  local done = false
  local function finish()
    if done then return end
    done = true
    if coroutine.status(co) == "suspended" then assert(coroutine.resume(co)) end
  end
  local function whole()
    local head, body = res.raw:match("^(.-)\r\n\r\n(.*)$")
    if not head then return false end
    local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: (%d+)"))
    return len and (opts.head or #body >= len)
  end
  tcp:connect("127.0.0.1", port, function(err)
    if err then
      res.err = err
      return finish()
    end
    if opts.read ~= false then
      tcp:read_start(function(rerr, data)
        if rerr or not data then
          res.closed, res.err = true, rerr
          return finish()
        end
        res.raw = res.raw .. data
        if not opts.to_close and whole() then finish() end
      end)
    end
    local pieces = type(request) == "table" and request or { request }
    local i = 0
    local timer = uv.new_timer()
    local function next_piece()
      i = i + 1
      if i > #pieces or tcp:is_closing() then
        timer:close()
        return
      end
      tcp:write(pieces[i], function() end)
      timer:start(opts.gap_ms or 0, 0, next_piece)
    end
    next_piece()
  end)
  local guard = uv.new_timer()
  guard:start(opts.timeout or 3000, 0, function()
    res.timed_out = true
    finish()
  end)
  if not done then coroutine.yield() end
  guard:close()
  if not tcp:is_closing() then tcp:close() end
  local head, body = res.raw:match("^(.-)\r\n\r\n(.*)$")
  if head then
    res.status = tonumber(head:match("^HTTP/1%.1 (%d+)"))
    res.headers = {}
    for k, v in head:gmatch("\r\n([^:]+): ([^\r]*)") do res.headers[k:lower()] = v end
    res.body = body
  end
  return res
end

local function get(port, path, extra)
  return http(port, "GET " .. (path or "/metrics") .. " HTTP/1.1\r\nHost: x\r\n" ..
    (extra or "") .. "\r\n")
end

-- ---- pool:metrics() --------------------------------------------------------------------------

describe("pool:metrics()", function()
  it("is Prometheus text: HELP and TYPE once per family, _total counters, base units",
    test(function(env)
      local pool = busy_pool(env)
      local text = pool:metrics()
      assert.equal("\n", text:sub(-1))
      local families, samples = parse(text)
      assert.is_true(#samples > 40)
      for name, f in pairs(families) do
        assert.equal(1, f.help, "one HELP line for " .. name)
        assert.is_truthy(f.type, "a TYPE line for " .. name)
        assert.matches("^peerpool_", name)
        if f.type == "counter" then assert.matches("_total$", name) end
        if name:match("_total$") then assert.equal("counter", f.type, name) end
        assert.is_nil(name:match("_ms") or name:match("milli"), "base units: " .. name)
        assert.is_true(#f.samples > 0, name .. " has samples")
      end
      assert.equal("summary", families.peerpool_connection_create_time_seconds.type)
    end))

  it("shows every number pool:stats() has, in base units", test(function(env)
    local pool = busy_pool(env)
    local s = pool:stats()
    local _, samples = parse(pool:metrics())
    local want = {
      conns = false, -- the sum of peerpool_connections (below)
      idle = { "peerpool_connections", { state = "idle" } },
      active = { "peerpool_connections", { state = "used" } },
      connecting = { "peerpool_connections", { state = "connecting" } },
      waiters = { "peerpool_pending_requests" },
      peers = false, -- the sum of peerpool_peers (below)
      acquires = { "peerpool_acquires_total" },
      acquired_immediate = { "peerpool_acquires_granted_total", { via = "immediate" } },
      acquired_dialed = { "peerpool_acquires_granted_total", { via = "dialed" } },
      acquired_waited = { "peerpool_acquires_granted_total", { via = "waited" } },
      timed_out = { "peerpool_acquires_failed_total", { error = "timeout" } },
      busy = { "peerpool_acquires_failed_total", { error = "busy" } },
      exhausted = { "peerpool_acquires_failed_total", { error = "exhausted" } },
      cannot_connect = { "peerpool_acquires_failed_total", { error = "cannot_connect" } },
      canceled = { "peerpool_acquires_failed_total", { error = "canceled" } },
      releases = { "peerpool_releases_total" },
      released_broken = { "peerpool_releases_broken_total" },
      connect_attempts = { "peerpool_connection_attempts_total" },
      connects_failed = { "peerpool_connection_attempt_failures_total" },
      connects_ok = { "peerpool_connection_create_time_seconds_count" },
      connect_latency_ms_avg = false, -- _sum / _count (below)
      connect_latency_ms_max = { "peerpool_connection_create_time_seconds_max", nil, 1000 },
      bytes_in = { "peerpool_received_bytes_total" },
      bytes_out = { "peerpool_sent_bytes_total" },
      msgs_in = { "peerpool_reads_total" },
      msgs_out = { "peerpool_writes_total" },
      pings = { "peerpool_pings_total" },
      pings_failed = { "peerpool_ping_failures_total" },
      ejections = { "peerpool_ejections_total" },
      ejections_refused = { "peerpool_ejections_refused_total" },
      failed_fast = { "peerpool_acquires_failed_fast_total" },
      probes = false, -- ok + failed (below)
      probes_failed = { "peerpool_probes_total", { result = "failed" } },
      tls_full = { "peerpool_tls_handshakes_total", { result = "full" } },
      tls_resumed = { "peerpool_tls_handshakes_total", { result = "resumed" } },
      tls_failed = { "peerpool_tls_handshakes_total", { result = "failed" } },
      seeds = { "peerpool_seed_calls_total" },
      warm_dials = { "peerpool_warm_dials_total" },
      peers_removed = { "peerpool_peers_removed_total", { how = "removed" } },
      peers_drained = { "peerpool_peers_removed_total", { how = "drained" } },
      leases_cut = { "peerpool_leases_cut_total" },
      dns_queries = false, -- ok + failed (below)
      dns_failures = { "peerpool_dns_lookups_total", { result = "failed" } },
      policy_errors = { "peerpool_policy_errors_total" },
      leaked_leases = { "peerpool_leaked_leases_total" },
      callback_errors = { "peerpool_callback_errors_total" },
    }
    for k, v in pairs(s) do
      if type(v) == "number" then
        local w = want[k]
        if w == nil then -- a field added since: exposed as it is until it gets a family
          assert.equal(v, value(samples, "peerpool_stats_" .. k), k)
        elseif w then
          local got = value(samples, w[1], w[2])
          assert.is_truthy(got, k .. " as " .. w[1])
          assert.near(v, got * (w[3] or 1), 1e-9 * math.max(1, v), k)
        end
      end
    end
    local conns, peers = 0, 0
    for _, x in ipairs(samples) do
      if x.name == "peerpool_connections" then conns = conns + x.value end
      if x.name == "peerpool_peers" then peers = peers + x.value end
    end
    assert.equal(s.conns, conns)
    assert.equal(s.peers, peers)
    assert.is_true(s.connects_ok > 0)
    assert.near(s.connect_latency_ms_avg / 1000,
      value(samples, "peerpool_connection_create_time_seconds_sum") /
      value(samples, "peerpool_connection_create_time_seconds_count"), 1e-12)
    for state, n in pairs(s.peers_by_state) do
      assert.equal(n, value(samples, "peerpool_peers", { state = state }), state)
    end
    for reason, n in pairs(s.closed) do
      assert.equal(n, value(samples, "peerpool_connections_closed_total", { reason = reason }))
    end
    for hook, h in pairs(s.hooks) do
      assert.equal(h.calls, value(samples, "peerpool_hook_calls_total", { hook = hook }), hook)
      assert.equal(h.errors, value(samples, "peerpool_hook_errors_total", { hook = hook }), hook)
    end
    assert.equal(1, value(samples, "peerpool_policy_info", { policy = s.policy }))
    assert.equal(1, value(samples, "peerpool_build_info", { version = peerpool.version }))
    assert.equal(1, value(samples, "peerpool_acquires_total"))
    assert.equal(1, value(samples, "peerpool_connections", { state = "idle" }))
    assert.equal(1, value(samples, "peerpool_peers", { state = "ready" }))
  end))

  it("splits lookups by result: ok is all of them less the failed", test(function(env)
    local dns = env:add(require "spec.support.dns_server".start())
    dns:set("up.pp.test", { a = { "127.0.0.1" }, ttl = 60 })
    local srv = env:line()
    local pool = env:pool { dns_servers = { dns.addr }, dns_timeout = 100 }
    pool:add_peer("up.pp.test:" .. srv.port)
    pool:add_peer("gone.pp.test:7")
    assert(pool:acquire("up.pp.test:" .. srv.port)):release()
    assert.equal("dns", select(2, pool:acquire("gone.pp.test:7")))
    local s = pool:stats()
    assert.is_true(s.dns_failures >= 1 and s.dns_queries > s.dns_failures)
    local _, samples = parse(pool:metrics())
    assert.equal(s.dns_failures,
      value(samples, "peerpool_dns_lookups_total", { result = "failed" }))
    assert.equal(s.dns_queries - s.dns_failures,
      value(samples, "peerpool_dns_lookups_total", { result = "ok" }))
  end))

  it("shows the limits the pool was made with, and the engine's defaults otherwise",
    test(function(env)
      local _, samples = parse(env:pool { max_total = 7, backlog = 3 }:metrics())
      assert.equal(7, value(samples, "peerpool_connections_max"))
      assert.equal(3, value(samples, "peerpool_pending_requests_max"))
      -- The defaults are the engine's: read them from its options table.
      local function default(field)
        for _, o in ipairs(peerpool.options()) do
          if o.name == field then return o.default end
        end
      end
      assert.equal(default("max_per_peer"), value(samples, "peerpool_connections_per_peer_max"))
      _, samples = parse(env:pool():metrics())
      assert.equal(default("max_total"), value(samples, "peerpool_connections_max"))
      assert.equal(default("backlog"), value(samples, "peerpool_pending_requests_max"))
    end))

  it("adds the given labels to every sample", test(function(env)
    local text = env:pool():metrics { pool = "redis", az = "b" }
    local _, samples = parse(text)
    for _, s in ipairs(samples) do assert.matches('^{az="b",pool="redis"', s.labels) end
    assert.matches('\npeerpool_connections{az="b",pool="redis",state="idle"} 0\n', text, nil,
      true)
    assert.matches('\npeerpool_peers{az="b",pool="redis",state="known"} 0\n', text, nil, true)
  end))

  it("escapes label values", test(function(env)
    local pool = env:pool()
    local text = pool:metrics { name = 'a"b\\c\nd' }
    assert.equal('{name="a\\"b\\\\c\\nd",state="idle"}',
      text:match("\npeerpool_connections(%b{}) 0\n"))
    -- a peer's address is a label value too, and need not be valid UTF-8 (a unix path)
    pool:add_peer('/tmp/pp"\\q\255.sock')
    text = pool:metrics(nil, { per_peer = 1 })
    assert.matches('peer="/tmp/pp\\"\\\\q?.sock"', text, nil, true)
    assert.is_truthy(utf8.len(text))
  end))

  it("raises naming bad labels and options", test(function(env)
    local pool = env:pool()
    for _, case in ipairs {
      { "redis", "bad argument #1 to 'metrics' (table of labels expected, got string)" },
      { { "x", y = "z" }, "bad argument #1 to 'metrics' (label name \"1\" is not a Prometheus" },
      { { ["bad name"] = 1 }, "bad argument #1 to 'metrics' (label name \"bad name\" is not" },
      { { __x = "y" }, "label name \"__x\" is not a Prometheus label name" },
      { { state = "x" }, "label name \"state\" is set by peerpool's own families" },
      { { peer = "x" }, "label name \"peer\" is set by peerpool's own families" },
      { { x = {} }, "label x must be a UTF-8 string, a number or a boolean" },
      { { per_peer = 5 }, "per_peer is an option, not a label: metrics(labels, { per_peer = N })" },
      { { x = "\255" }, "label x must be a UTF-8 string, a number or a boolean" },
    } do
      assert.error_matches(function() pool:metrics(case[1]) end, case[2], nil, true)
    end
    assert.error_matches(function() pool:metrics(nil, { per_peer = -1 }) end,
      "bad argument #2 to 'metrics' (per_peer must be an integer in 0..1000)", nil, true)
    assert.error_matches(function() pool:metrics(nil, { per_peer = 1001 }) end,
      "per_peer must be an integer in 0..1000", nil, true)
    assert.error_matches(function() pool:metrics(nil, { top = 1 }) end,
      "bad argument #2 to 'metrics' (unknown option 'top')", nil, true)
    pool:close()
    assert.error_matches(function() pool:metrics() end, "attempt to use a closed pool", nil, true)
  end))

  it("adds per-peer series only when asked, for the N peers with the most traffic",
    test(function(env)
      local pool, srv = env:pool_with("line")
      local quiet = pool:add_peer("127.0.0.1:1")
      local unix = pool:add_peer("/tmp/pp-metrics-nobody.sock")
      local conn = assert(pool:acquire(srv.addr))
      conn:send("ECHO " .. string.rep("x", 100) .. "\r\n")
      conn:receive()
      conn:release()
      local families = parse(pool:metrics())
      for name in pairs(families) do assert.is_nil(name:match("^peerpool_peer_"), name) end
      local text = pool:metrics(nil, { per_peer = 2 })
      local _, samples = parse(text)
      assert.equal(1, value(samples, "peerpool_peer_state", { peer = srv.addr, state = "ready" }))
      assert.equal(107, value(samples, "peerpool_peer_sent_bytes_total", { peer = srv.addr }))
      assert.equal(102, value(samples, "peerpool_peer_received_bytes_total", { peer = srv.addr }))
      assert.equal(1, value(samples, "peerpool_peer_idle_connections", { peer = srv.addr }))
      -- the busiest first; between quiet ones, the address decides
      local peers = {}
      for _, s in ipairs(samples) do
        if s.name == "peerpool_peer_connections" then peers[#peers + 1] = s.l.peer end
      end
      assert.same({ srv.addr, unix < quiet and unix or quiet }, peers)
      local ok, out = true, ""
      if PROMTOOL then ok, out = promtool(text) end
      assert.is_true(ok, out)
    end))

  it("stays bounded with 10,000 peers: no per-peer series unless asked, then N", test(
    function(env)
      local pool = env:pool()
      local _, few = parse(pool:metrics(nil, { per_peer = 5 }))
      for i = 1, 10000 do
        pool:add_peer(string.format("10.%d.%d.%d:6379", i // 65536, (i // 256) % 256, i % 256))
      end
      local _, plain = parse(pool:metrics())
      local _, top = parse(pool:metrics(nil, { per_peer = 5 }))
      local _, none = parse(env:pool():metrics())
      assert.equal(#none, #plain)
      local per_peer = #top - #plain
      assert.is_true(per_peer > 0 and per_peer <= 5 * 20, "per-peer samples: " .. per_peer)
      assert.equal(#few, #plain) -- no peers yet: the per-peer families had nothing to show
    end))

  it("passes promtool check metrics", test(function(env)
    if not PROMTOOL then return pending("promtool is not installed (make test installs it)") end
    local pool = busy_pool(env, { name = "main" })
    pool:add_peer("127.0.0.1:1")
    pool:add_peer("[::1]:2")
    pool:add_peer('/tmp/odd "name"\\.sock')
    local texts = {
      pool:metrics(),
      pool:metrics({ az = 'a"b\\c\nd', n = 1, flag = true }, { per_peer = 10 }),
      peerpool.metrics(),
      peerpool.metrics({ region = "eu" }, { per_peer = 3 }),
    }
    env:pool { name = "main" }
    texts[#texts + 1] = peerpool.metrics(nil, { per_peer = 1000 })
    for i, text in ipairs(texts) do
      local ok, out = promtool(text)
      assert.is_true(ok, "exposition " .. i .. ": " .. out)
      assert.equal("", out)
    end
  end))
end)

-- ---- peerpool.metrics() ---------------------------------------------------------------------

describe("peerpool.metrics()", function()
  it("shows every open pool, labelled by name (or number), HELP and TYPE once per family",
    test(function(env)
      local a = busy_pool(env, { name = "redis" })
      local b = env:pool()
      local c = env:pool { name = "redis" }
      local gone = env:pool { name = "gone" }
      gone:close()
      local text = peerpool.metrics()
      local families, samples = parse(text)
      for name, f in pairs(families) do assert.equal(1, f.help, name) end
      local names = {}
      for _, s in ipairs(samples) do
        if s.name == "peerpool_acquires_total" then names[#names + 1] = s.l.pool end
      end
      -- in order of creation; a repeated name gets the pool's number
      assert.equal(3, #names)
      assert.equal("redis", names[1])
      assert.matches("^%d+$", names[2])
      assert.equal("redis-" .. (tonumber(names[2]) + 1), names[3])
      assert.equal(1, value(samples, "peerpool_acquires_total", { pool = "redis" }))
      assert.equal(0, value(samples, "peerpool_acquires_total", { pool = names[3] }))
      assert.is_nil(text:find('pool="gone"', 1, true))
      assert.matches("\npeerpool_build_info{version=", text, nil, true)
      assert.truthy(a and b and c)
    end))

  it("adds labels to every sample, but not `pool`, which it sets", test(function(env)
    env:pool { name = "x" }
    local _, samples = parse(peerpool.metrics { dc = "eu" })
    for _, s in ipairs(samples) do assert.equal("eu", s.l.dc, s.name) end
    assert.error_matches(function() peerpool.metrics { pool = "y" } end,
      "label name \"pool\" is set by peerpool's own families", nil, true)
  end))

  it("rejects a pool name that is not a non-empty UTF-8 string", function()
    for _, bad in ipairs { "", 1, "\255", string.rep("x", 129) } do
      assert.error_matches(function() peerpool.new { name = bad } end,
        "peerpool.new: option 'name' must be a non-empty UTF-8 string of at most 128 bytes",
        nil, true)
    end
  end)
end)

-- ---- the endpoint ---------------------------------------------------------------------------

describe("peerpool.serve_metrics()", function()
  -- An endpoint closed at the end of the test.
  local function serve(env, opts)
    local srv = assert(peerpool.serve_metrics(nil, 0, opts))
    env.servers[#env.servers + 1] = srv
    return srv
  end

  it("answers GET /metrics with every open pool's exposition, on 127.0.0.1", test(function(env)
    busy_pool(env, { name = "redis" })
    local srv = serve(env)
    assert.is_true(srv.port > 0)
    assert.equal("http://127.0.0.1:" .. srv.port .. "/metrics", srv.url)
    local res = get(srv.port)
    assert.equal(200, res.status)
    assert.equal("text/plain; version=0.0.4; charset=utf-8", res.headers["content-type"])
    assert.equal(#res.body, tonumber(res.headers["content-length"]))
    local _, samples = parse(res.body)
    assert.equal(1, value(samples, "peerpool_acquires_total", { pool = "redis" }))
    assert.equal(#select(2, parse(peerpool.metrics())), #select(2, parse(res.body)))
    -- a query string is fine; HEAD gets the headers alone
    assert.equal(200, get(srv.port, "/metrics?x=1").status)
    local head = http(srv.port, "HEAD /metrics HTTP/1.1\r\n\r\n", { head = true })
    assert.equal(200, head.status)
    assert.equal("", head.body)
  end))

  it("keeps the conn for further requests, and closes it when asked", test(function(env)
    env:pool()
    local srv = serve(env)
    local req = "GET /metrics HTTP/1.1\r\n\r\n"
    local res = http(srv.port, { req, req, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n" },
      { gap_ms = 20, to_close = true })
    local n = select(2, res.raw:gsub("HTTP/1%.1 200 OK", ""))
    assert.equal(3, n)
    assert.is_true(res.closed)
    -- HTTP/1.0 closes unless it asks for keep-alive
    res = http(srv.port, "GET /metrics HTTP/1.0\r\n\r\n", { to_close = true })
    assert.equal(200, res.status)
    assert.is_true(res.closed)
    assert.equal("close", res.headers.connection)
  end))

  it("answers 404 to other paths, 405 to other methods, 400 to what is not HTTP",
    test(function(env)
      local srv = serve(env)
      assert.equal(404, get(srv.port, "/").status)
      assert.equal(404, get(srv.port, "/metricsx").status)
      local res = http(srv.port, "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
        { to_close = true })
      assert.equal(405, res.status)
      assert.equal("GET, HEAD", res.headers.allow)
      assert.is_true(res.closed) -- its body is not read as a request
      res = http(srv.port, "hello there\r\n\r\n", { to_close = true })
      assert.equal(400, res.status)
      assert.is_true(res.closed)
      local s = srv:stats()
      assert.equal(2, s[404])
      assert.equal(1, s[405])
      assert.equal(1, s[400])
    end))

  it("binds where asked, and fails with nil, code, detail when it cannot", test(function(env)
    local srv = serve(env)
    local again, code, detail = peerpool.serve_metrics("127.0.0.1", srv.port)
    assert.is_nil(again)
    assert.equal("EADDRINUSE", code)
    assert.matches("cannot serve metrics on 127.0.0.1 port " .. srv.port, detail, nil, true)
    local six = peerpool.serve_metrics("::1", 0)
    if six then
      env.servers[#env.servers + 1] = six
      assert.matches("^http://%[::1%]:%d+/metrics$", six.url)
    end
    assert.error_matches(function() peerpool.serve_metrics(1, 0) end,
      "bad argument #1 to 'serve_metrics' (address string expected, got number)", nil, true)
    assert.error_matches(function() peerpool.serve_metrics(nil, 70000) end,
      "bad argument #2 to 'serve_metrics' (port must be an integer in 0..65535)", nil, true)
    assert.error_matches(function() peerpool.serve_metrics(nil, 0, { max_clients = 0 }) end,
      "max_clients must be a positive integer", nil, true)
    assert.error_matches(function() peerpool.serve_metrics(nil, 0, { labels = { pool = 1 } }) end,
      "label name \"pool\" is set by peerpool's own families", nil, true)
  end))

  it("closes its client conns and its listener on close(), once", test(function(env)
    local fds = fd_count()
    local srv = serve(env)
    local client, eof = uv.new_tcp(), false
    client:connect("127.0.0.1", srv.port, function()
      client:write("GET /metr") -- left half-sent
      client:read_start(function(_, data) if not data then eof = true end end)
    end)
    wait_until(function() return srv:stats().clients == 1 end)
    assert.is_true(srv:close())
    assert.is_false(srv:close())
    assert.equal(0, srv:stats().clients)
    wait_until(function() return eof end, 1000, "the client to see its conn closed")
    client:close()
    H.ticks()
    assert.equal(fds, fd_count())
    assert.is_truthy(http(srv.port, "GET /metrics HTTP/1.1\r\n\r\n").err)
  end))

  describe("with hostile clients", function()
    local LIMITS = { request_timeout = 200, idle_timeout = 300, write_timeout = 300,
      max_request_bytes = 1024, max_clients = 4 }

    it("drops a client that drips its request slower than request_timeout", test(function(env)
      local srv = serve(env, LIMITS)
      local fds = fd_count()
      local pieces = {}
      for c in ("GET /metrics HTTP/1.1\r\n\r\n"):gmatch(".") do pieces[#pieces + 1] = c end
      local t0 = uv.now()
      local res = http(srv.port, pieces, { gap_ms = 50, to_close = true })
      assert.is_true(res.closed)
      assert.is_nil(res.status)
      assert.is_true(uv.now() - t0 < 1000)
      assert.equal(1, srv:stats().request_timeout)
      H.ticks()
      assert.equal(fds, fd_count())
    end))

    it("drops a kept-alive client that sends nothing more after idle_timeout",
      test(function(env)
        local srv = serve(env, LIMITS)
        local res = http(srv.port, "GET /metrics HTTP/1.1\r\n\r\n", { to_close = true })
        assert.equal(200, res.status)
        assert.is_true(res.closed)
        assert.equal(1, srv:stats().idle_timeout)
      end))

    it("answers 431 to a request over max_request_bytes and reads no more of it",
      test(function(env)
        local srv = serve(env, LIMITS)
        local before = collectgarbage("count")
        local huge = "GET /metrics HTTP/1.1\r\nX: " .. string.rep("a", 4 << 20) .. "\r\n\r\n"
        local res = http(srv.port, huge, { to_close = true })
        assert.is_true(res.closed)
        if res.status then assert.equal(431, res.status) end -- a reset may beat the answer
        assert.equal(1, srv:stats().too_large)
        huge = nil -- luacheck: ignore 311
        H.ticks()
        collectgarbage()
        assert.is_true(collectgarbage("count") - before < 1024, "Lua memory kept")
      end))

    it("drops a client that never reads its responses after write_timeout", test(function(env)
      local pool = env:pool()
      for i = 1, 1000 do pool:add_peer("10.0." .. (i // 256) .. "." .. (i % 256) .. ":1") end
      local opts = {}
      for k, v in pairs(LIMITS) do opts[k] = v end
      opts.per_peer, opts.max_request_bytes = 1000, 1 << 20
      local srv = serve(env, opts)
      -- ~1.3 MB per answer: the socket buffers fill well before 40 answers
      local req = string.rep("GET /metrics HTTP/1.1\r\n\r\n", 40)
      local fds = fd_count()
      local res = http(srv.port, req, { read = false, timeout = 1500 })
      assert.is_true(res.timed_out)
      wait_until(function() return srv:stats().write_timeout == 1 end, 3000,
        "the endpoint to drop the client")
      assert.equal(0, srv:stats().clients)
      H.ticks()
      assert.is_true(fd_count() <= fds)
    end))

    it("makes room past max_clients by closing silent conns, else turns newcomers away",
      test(function(env)
        -- deadlines far enough not to close a conn while the test looks
        local srv = serve(env, { max_clients = 4, request_timeout = 5000 })
        local socks, sent = {}, 0
        local function connect(first_bytes)
          local sock = uv.new_tcp()
          sock:connect("127.0.0.1", srv.port, function()
            if first_bytes then sock:write(first_bytes, function() sent = sent + 1 end) end
          end)
          socks[#socks + 1] = sock
        end
        for _ = 1, 6 do connect() end
        wait_until(function() return (srv:stats().evicted or 0) == 2 end)
        assert.equal(4, srv:stats().clients)
        for _, sock in ipairs(socks) do sock:close() end
        socks = {}
        wait_until(function() return srv:stats().clients == 0 end)
        -- with every slot mid-request, a newcomer is turned away
        for _ = 1, 4 do connect("GET /met") end
        wait_until(function() return srv:stats().clients == 4 end)
        -- their first bytes have arrived: written, then read on the loop's next turns (a fixed
        -- sleep could end in the same turn as the newcomer's accept, before the reads)
        wait_until(function() return sent == 4 end)
        H.ticks()
        connect()
        wait_until(function() return srv:stats().refused == 1 end)
        assert.equal(4, srv:stats().clients)
        for _, sock in ipairs(socks) do sock:close() end
        wait_until(function() return srv:stats().clients == 0 end)
        assert.equal(200, get(srv.port).status)
      end))

    it("leaks no fds and no memory over 300 hostile clients", test(function(env)
      env:pool()
      local srv = serve(env, LIMITS)
      local function round()
        H.in_parallel(30, function(i)
          local kind = i % 3
          if kind == 0 then
            http(srv.port, { "GET /met", "rics HT" }, { gap_ms = 10, to_close = true })
          elseif kind == 1 then
            http(srv.port, string.rep("x", 3000), { to_close = true })
          else
            http(srv.port, "GET /metrics HTTP/1.1\r\n\r\n", { timeout = 50 })
          end
        end, 5000)
      end
      round()
      wait_until(function() return srv:stats().clients == 0 end, 3000)
      collectgarbage()
      local fds, mem = fd_count(), collectgarbage("count")
      for _ = 1, 10 do round() end
      wait_until(function() return srv:stats().clients == 0 end, 3000)
      H.ticks()
      collectgarbage()
      assert.equal(fds, fd_count())
      assert.is_true(collectgarbage("count") - mem < 256, "Lua memory grew by " ..
        (collectgarbage("count") - mem) .. " KiB")
      assert.equal(200, get(srv.port).status)
    end))
  end)
end)

-- ---- the host and a real Prometheus -----------------------------------------------------------

describe("peerpool --metrics HOST:PORT", function()
  it("serves every pool of the script, and does not keep the program running", function()
    T.run(function()
      local p = T.spawn({ T.peerpool, "--metrics", "127.0.0.1:0", "-e", [[
        local uv, pp = require "luv", require "peerpool"
        P = pp.new { name = "app" }
        local h = require("peerpool.host").metrics
        print("port " .. h.port)
        local t = uv.new_timer()
        t:start(500, 0, function() t:close(); P:close() end)
      ]] })
      local port = tonumber(p:expect("port (%d+)"))
      local res = get(port)
      assert.equal(200, res.status)
      assert.matches('peerpool_acquires_total{pool="app"} 0', res.body, nil, true)
      assert.same({ 0, 0 }, { p:wait() }) -- the endpoint alone does not keep it running
      assert.matches("metrics on http://127.0.0.1:" .. port .. "/metrics", p.err, nil, true)
      local bad = T.spawn { T.peerpool, "--metrics", "nonsense", "-e", "" }
      assert.equal(2, (bad:wait()))
      assert.matches("expects HOST:PORT", bad.err, nil, true)
      local busy = uv.new_tcp()
      busy:bind("127.0.0.1", 0)
      busy:listen(1, function() end)
      local taken = T.spawn { T.peerpool, "--metrics", "127.0.0.1:" .. busy:getsockname().port,
        "-e", "print 'ran'" }
      assert.equal(1, (taken:wait()))
      busy:close()
      assert.matches("--metrics: cannot serve metrics on 127.0.0.1 port %d+: EADDRINUSE", taken.err)
      assert.equal("", taken.out) -- the script does not run
    end)
  end)
end)

describe("a real Prometheus server", function()
  it("scrapes the endpoint, and its query API gives back the pool's series", function()
    if not PROMETHEUS then
      return pending("prometheus is not installed (make test installs it)")
    end
    local dir = assert(uv.fs_mkdtemp("/tmp/pp-prom-XXXXXX"))
    finally(function() os.execute("rm -rf '" .. dir .. "'") end)
    T.run(function()
      local peer = require("spec.support.servers").line()
      local pool = peerpool.new { name = "redis" }
      local endpoint = assert(peerpool.serve_metrics("127.0.0.1", 0))
      local ok, err = pcall(function()
        pool:add_peer(peer.addr)
        for _ = 1, 3 do
          local conn = assert(pool:acquire(peer.addr))
          conn:send("PING\r\n")
          conn:receive()
          conn:release()
        end
        local f = assert(io.open(dir .. "/prometheus.yml", "w"))
        f:write(string.format([[
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: peerpool
    static_configs:
      - targets: ["127.0.0.1:%d"]
]], endpoint.port))
        f:close()
        local query = "/api/v1/query?query=peerpool_acquires_total%7Bpool%3D%22redis%22%7D"
        local prom, got
        -- its web port was free a moment ago: when a test running in parallel took it first,
        -- Prometheus exits at once, and another port is tried
        for _ = 1, 3 do
          local web = uv.new_tcp() -- a free port for Prometheus' web API
          web:bind("127.0.0.1", 0)
          local web_port = web:getsockname().port
          web:close()
          -- `timeout` ends it even if this process dies first
          prom = T.spawn({ "timeout", "25", PROMETHEUS, "--config.file=" .. dir ..
            "/prometheus.yml", "--storage.tsdb.path=" .. dir .. "/data",
            "--web.listen-address=127.0.0.1:" .. web_port, "--log.level=warn" },
            { env = { LD_PRELOAD = false } })
          local deadline = uv.now() + 20000
          while uv.now() < deadline and not prom.exited do
            local res = http(web_port, "GET " .. query .. " HTTP/1.1\r\nHost: x\r\n\r\n")
            if res.status == 200 then
              got = res.body:match('"value":%[[%d.]+,"(%d+)"%]')
              if got then break end
            end
            T.sleep(200)
          end
          if got or not (prom.exited and prom.err:find("address already in use", 1, true)) then
            break
          end
        end
        prom:kill()
        assert.is_truthy(got or not prom.exited, "prometheus exited: " .. prom.err)
        assert.equal("3", got, "no peerpool_acquires_total from Prometheus within 20 s")
        assert.is_true(endpoint:stats()[200] >= 1)
        prom:wait(5000)
      end)
      endpoint:close()
      pool:close()
      peer:close()
      assert(ok, err)
    end, 30000)
  end)
end)
