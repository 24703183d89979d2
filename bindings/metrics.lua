-- Prometheus exposition of pools (pool:metrics(), peerpool.metrics()) and the /metrics endpoint
-- (peerpool.serve_metrics), compiled into peerpool.so and run by peerpool.lua. The families,
-- their units and what they map to in OpenTelemetry, HikariCP and Envoy: docs/metrics.md.
local M, pool_mt, uv, check_pool, emit = ... -- the module table, the pool metatable, luv,
-- peerpool.lua's self check, the binding's error reporter (peerpool.on_error or stderr)
local pool_methods = pool_mt.__index

local fmt, concat, sort = string.format, table.concat, table.sort
local mtype = math.type

local metrics = {} -- what peerpool.lua calls

-- ---- what the exposition knows of a pool besides its stats ---------------------------------

-- The engine's defaults of the limits shown (from its options table, PP_OPTIONS_MAP).
local DEFAULT_LIMITS = {}
for _, o in ipairs(M.options()) do
  if o.name == "max_total" or o.name == "max_per_peer" or o.name == "backlog" then
    DEFAULT_LIMITS[o.name] = o.default
  end
end

local info = setmetatable({}, { __mode = "k" }) -- pool -> { name, seq, max_total, ... }
local seq = 0

--- metrics.check_name(name): nil, or why `name` cannot name a pool.
function metrics.check_name(name)
  if type(name) ~= "string" or name == "" or #name > 128 or not utf8.len(name) then
    return "option 'name' must be a non-empty UTF-8 string of at most 128 bytes"
  end
end

--- metrics.created(pool, opts): remember the pool's name and limits (peerpool.new calls it).
function metrics.created(pool, opts)
  seq = seq + 1
  local i = { name = opts.name, seq = seq }
  for k, v in pairs(DEFAULT_LIMITS) do i[k] = opts[k] or v end
  info[pool] = i
end

-- ---- label and value text -------------------------------------------------------------------

local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }

local function escape(v)
  if v:find('[\\"\n]') then v = v:gsub('[\\"\n]', ESCAPES) end
  return v
end

-- A label value from the pool itself (a peer's address): invalid UTF-8 would make Prometheus
-- drop the whole scrape, so bytes that do not decode become "?".
local function safe_value(v)
  if not utf8.len(v) then
    local out, i = {}, 1
    while i <= #v do
      local ok, nexti = pcall(utf8.offset, v, 2, i)
      local ch = ok and nexti and v:sub(i, nexti - 1)
      if ch and utf8.len(ch) then
        out[#out + 1], i = ch, nexti
      else
        out[#out + 1], i = "?", i + 1
      end
    end
    v = concat(out)
  end
  return escape(v)
end

-- A sample value: integers as they are, floats exactly (shortest form that reads back), NaN
-- and infinities as Prometheus spells them.
local function num(v)
  if mtype(v) == "integer" then return fmt("%d", v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  local s = fmt("%.15g", v)
  if tonumber(s) ~= v then s = fmt("%.17g", v) end
  return s
end

-- Label names the families set themselves: a caller's label of the same name would make a
-- sample carry it twice.
local OWN_LABELS = {
  state = true, via = true, error = true, reason = true, hook = true, policy = true,
  peer = true, version = true, le = true, quantile = true, phase = true,
}

-- The labels a caller gave, as sorted `name="value"` text; raises naming argument #arg.
local function label_text(labels, fname, arg, reserved)
  if labels == nil then return "" end
  if type(labels) ~= "table" then
    error(fmt("bad argument #%d to '%s' (table of labels expected, got %s)", arg, fname,
      type(labels)), 3)
  end
  local keys = {}
  for k, v in pairs(labels) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") or k:match("^__") then
      error(fmt("bad argument #%d to '%s' (label name %q is not a Prometheus label name: " ..
        "[a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", arg, fname, tostring(k)), 3)
    end
    if k == "per_peer" then -- an option given where the labels go
      error(fmt("bad argument #%d to '%s' (per_peer is an option, not a label: %s(labels, " ..
        "{ per_peer = N }))", arg, fname, fname), 3)
    end
    if OWN_LABELS[k] or k == reserved then
      error(fmt("bad argument #%d to '%s' (label name %q is set by peerpool's own families)",
        arg, fname, k), 3)
    end
    local tv = type(v)
    if (tv ~= "string" and tv ~= "number" and tv ~= "boolean") or not utf8.len(tostring(v)) then
      error(fmt("bad argument #%d to '%s' (label %s must be a UTF-8 string, a number or a " ..
        "boolean)", arg, fname, k), 3)
    end
    keys[#keys + 1] = k
  end
  sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. '="' .. escape(tostring(labels[k])) .. '"' end
  return concat(keys, ",")
end

local MAX_PER_PEER = 1000

local function check_opts(opts, fname, arg, extra)
  if opts == nil then return 0 end
  if type(opts) ~= "table" then
    error(fmt("bad argument #%d to '%s' (table of options expected, got %s)", arg, fname,
      type(opts)), 3)
  end
  for k in pairs(opts) do
    if k ~= "per_peer" and not (extra and extra[k]) then
      error(fmt("bad argument #%d to '%s' (unknown option '%s')", arg, fname, tostring(k)), 3)
    end
  end
  local n = opts.per_peer or 0
  if mtype(n) ~= "integer" or n < 0 or n > MAX_PER_PEER then
    error(fmt("bad argument #%d to '%s' (per_peer must be an integer in 0..%d)", arg, fname,
      MAX_PER_PEER), 3)
  end
  return n
end

-- ---- the families ---------------------------------------------------------------------------
-- Each family's fn(t, e) calls e(extra_labels_or_nil, value [, suffix]) once per sample of the
-- target t (t.s: its stats; t.info: name and limits; t.peer: a peer view for per-peer ones).

local POOL, PEER = {}, {} -- families, in exposition order
local MAPPED = {}         -- stats fields a family shows (the others get a family of their own)

local function family(list, name, kind, help, fields, fn)
  list[#list + 1] = { name = name, kind = kind, help = help, fn = fn }
  for _, f in ipairs(fields) do MAPPED[f] = true end
end

-- One family per stats field that needs nothing but a rename (and maybe a unit change).
local function simple(name, kind, help, field)
  family(POOL, name, kind, help, { field }, function(t, e) e(nil, t.s[field]) end)
end

-- A family with one sample per stats field, labelled `label`: samples = { {value, field}, ... }.
local function labelled(name, kind, help, label, samples)
  local fields = {}
  for i, v in ipairs(samples) do fields[i] = v[2] end
  family(POOL, name, kind, help, fields, function(t, e)
    for _, v in ipairs(samples) do e(label .. '="' .. v[1] .. '"', t.s[v[2]]) end
  end)
end

-- A counter by result (ok, failed), from the stats fields counting all of them and the failed.
local function by_result(name, help, all, failed)
  family(POOL, name, "counter", help, { all, failed }, function(t, e)
    e('result="ok"', t.s[all] - t.s[failed])
    e('result="failed"', t.s[failed])
  end)
end

-- A family with one sample per key of a stats sub-table, labelled `label`.
local function by(name, kind, help, field, label)
  family(POOL, name, kind, help, { field }, function(t, e)
    local tbl = t.s[field]
    local keys = {}
    for k in pairs(tbl) do keys[#keys + 1] = k end
    sort(keys)
    for _, k in ipairs(keys) do e(label .. '="' .. escape(k) .. '"', tbl[k]) end
  end)
end

family(POOL, "peerpool_connections", "gauge",
  "Conns by state: idle (open, no lease), used (at least one lease), connecting (dialling, " ..
  "handshaking, or waiting between connect attempts), other (open but not lendable now: a " ..
  "health ping running).", { "conns", "idle", "active", "connecting" }, function(t, e)
    local s = t.s
    e('state="idle"', s.idle)
    e('state="used"', s.active)
    e('state="connecting"', s.connecting)
    e('state="other"', s.conns - s.idle - s.active - s.connecting)
  end)
family(POOL, "peerpool_connections_max", "gauge",
  "Conns the pool may hold at once, connecting ones included (option max_total).", {},
  function(t, e) e(nil, t.info.max_total) end)
family(POOL, "peerpool_connections_per_peer_max", "gauge",
  "Conns the pool may hold to one peer (option max_per_peer).", {},
  function(t, e) e(nil, t.info.max_per_peer) end)
simple("peerpool_pending_requests", "gauge",
  "Acquires waiting for a conn (behind capacity, or for the conn dialled for them).", "waiters")
family(POOL, "peerpool_pending_requests_max", "gauge",
  "Acquires that may queue behind capacity (option backlog); past it they answer exhausted.",
  {}, function(t, e) e(nil, t.info.backlog) end)
simple("peerpool_acquires_total", "counter", "Acquires accepted.", "acquires")
labelled("peerpool_acquires_granted_total", "counter",
  "Acquires that got a conn, by how: immediate (an idle or shareable conn at once), dialed " ..
  "(the conn dialled for it), waited (after queueing behind capacity).", "via",
  { { "immediate", "acquired_immediate" }, { "dialed", "acquired_dialed" },
    { "waited", "acquired_waited" } })
labelled("peerpool_acquires_failed_total", "counter",
  "Acquires that ended without a conn, by the error code they returned: timeout (deadline " ..
  "reached), busy (at capacity with busy = \"fail\"), exhausted (wait queue full), " ..
  "cannot_connect (out of connect attempts), canceled.", "error",
  { { "timeout", "timed_out" }, { "busy", "busy" }, { "exhausted", "exhausted" },
    { "cannot_connect", "cannot_connect" }, { "canceled", "canceled" } })
simple("peerpool_releases_total", "counter", "Leases released, healthy or broken.", "releases")
simple("peerpool_releases_broken_total", "counter",
  "Leases released as broken (the conn is closed and its peer's failures rise).",
  "released_broken")
simple("peerpool_connection_attempts_total", "counter", "Connect attempts started.",
  "connect_attempts")
simple("peerpool_connection_attempt_failures_total", "counter",
  "Connect attempts that failed (refused, timed out, handshake failed).", "connects_failed")
family(POOL, "peerpool_connection_create_time_seconds", "summary",
  "Time to connect: _sum adds up the successful socket connects, _count counts the conns " ..
  "that became ready.", { "connect_latency_ms_avg", "connects_ok" }, function(t, e)
    e(nil, t.s.connect_latency_ms_avg * t.s.connects_ok / 1000, "_sum")
    e(nil, t.s.connects_ok, "_count")
  end)
family(POOL, "peerpool_connection_create_time_seconds_max", "gauge",
  "Longest successful connect since the pool was made.", { "connect_latency_ms_max" },
  function(t, e) e(nil, t.s.connect_latency_ms_max / 1000) end)
by("peerpool_connections_closed_total", "counter", "Conns closed, by reason.", "closed", "reason")

-- Histograms (stats().histograms, kept by the engine in fixed buckets: powers of two of a
-- microsecond, 1 us .. 67.1 s): _bucket{le=...} cumulative, then +Inf, _sum and _count.
local LE_TEXT = setmetatable({}, { __mode = "k" }) -- bounds table -> its label texts

local function le_texts(le)
  local t = LE_TEXT[le]
  if t then return t end
  t = {}
  for i, v in ipairs(le) do
    t[i] = 'le="' .. fmt("%.6f", v):gsub("0+$", ""):gsub("%.$", "") .. '"'
  end
  LE_TEXT[le] = t
  return t
end

local function hist_samples(e, h, extra)
  if not h then return end
  local pre = extra and extra .. "," or ""
  local les = le_texts(h.le)
  for i, n in ipairs(h.buckets) do e(pre .. les[i], n, "_bucket") end
  e(pre .. 'le="+Inf"', h.count, "_bucket")
  e(extra, h.sum, "_sum")
  e(extra, h.count, "_count")
end

family(POOL, "peerpool_acquire_wait_seconds", "histogram",
  "Time from an acquire to its grant, for every granted acquire (an idle conn lent at once " ..
  "counts 0); failed acquires are not observed.", {}, function(t, e)
    hist_samples(e, t.s.histograms and t.s.histograms.acquire_wait)
  end)
family(POOL, "peerpool_connect_duration_seconds", "histogram",
  "Successful connect phases, by phase: tcp (the socket connect), tls (the TLS handshake), " ..
  "handshake (the handshake hook).", {}, function(t, e)
    local hs = t.s.histograms
    if not hs then return end
    hist_samples(e, hs.connect, 'phase="tcp"')
    hist_samples(e, hs.tls, 'phase="tls"')
    hist_samples(e, hs.handshake, 'phase="handshake"')
  end)
family(POOL, "peerpool_lease_hold_seconds", "histogram",
  "Time a lease held its conn, from the grant to the release (loop-tick resolution, 1..4 ms).",
  {}, function(t, e)
    hist_samples(e, t.s.histograms and t.s.histograms.hold)
  end)
family(POOL, "peerpool_request_duration_seconds", "histogram",
  "Requests on framed (pipelined) conns, from the send to the read that brought the whole " ..
  "reply; failed requests are not observed.", {}, function(t, e)
    hist_samples(e, t.s.histograms and t.s.histograms.request)
  end)
by("peerpool_peers", "gauge", "Peers known to the pool, by state.", "peers_by_state", "state")
MAPPED.peers = true -- the sum of peerpool_peers
simple("peerpool_sent_bytes_total", "counter", "Bytes written to peers.", "bytes_out")
simple("peerpool_received_bytes_total", "counter", "Bytes read from peers.", "bytes_in")
simple("peerpool_writes_total", "counter", "Writes to peers completed.", "msgs_out")
simple("peerpool_reads_total", "counter", "Reads from peers delivered.", "msgs_in")
simple("peerpool_pings_total", "counter", "Health pings started.", "pings")
simple("peerpool_ping_failures_total", "counter", "Health pings that failed.", "pings_failed")
simple("peerpool_ejections_total", "counter",
  "Peers ejected for a cool-down after consecutive failures.", "ejections")
simple("peerpool_ejections_refused_total", "counter",
  "Ejections eject_max_percent refused (the peer backed off briefly instead).",
  "ejections_refused")
simple("peerpool_acquires_failed_fast_total", "counter",
  "Acquires answered at once because no peer could serve them (burned, ejected, backing " ..
  "off, too old).", "failed_fast")
by_result("peerpool_probes_total",
  "Probe connects of ejected or backing-off peers, by result (ok, failed).", "probes",
  "probes_failed")
labelled("peerpool_tls_handshakes_total", "counter",
  "TLS handshakes, by result: full, resumed (a cached session), failed.", "result",
  { { "full", "tls_full" }, { "resumed", "tls_resumed" }, { "failed", "tls_failed" } })
by_result("peerpool_dns_lookups_total",
  "Host name lookups (A and AAAA together count one), by result (ok, failed).", "dns_queries",
  "dns_failures")
simple("peerpool_warm_dials_total", "counter", "Dials started to keep min_idle conns idle.",
  "warm_dials")
labelled("peerpool_peers_removed_total", "counter",
  "Peers taken out of service, by how: removed (remove_peer), drained (drain started).", "how",
  { { "removed", "peers_removed" }, { "drained", "peers_drained" } })
simple("peerpool_leases_cut_total", "counter",
  "Leases a pool close took from their holders (a plain close, or a graceful one that ran out).",
  "leases_cut")
simple("peerpool_seed_calls_total", "counter", "Seed hook calls.", "seeds")
simple("peerpool_policy_errors_total", "counter",
  "Policy answers the engine had to ignore (a default decision was taken instead).",
  "policy_errors")
family(POOL, "peerpool_hook_calls_total", "counter", "Policy hook calls, by hook.", { "hooks" },
  function(t, e)
    local keys = {}
    for k in pairs(t.s.hooks) do keys[#keys + 1] = k end
    sort(keys)
    t.hook_names = keys
    for _, k in ipairs(keys) do e('hook="' .. k .. '"', t.s.hooks[k].calls) end
  end)
family(POOL, "peerpool_hook_errors_total", "counter",
  "Policy hook calls that raised, ran out of budget or answered nonsense, by hook.", {},
  function(t, e)
    for _, k in ipairs(t.hook_names) do e('hook="' .. k .. '"', t.s.hooks[k].errors) end
  end)
simple("peerpool_callback_errors_total", "counter",
  "Errors raised by Lua callbacks and coroutines the module ran.", "callback_errors")
simple("peerpool_leaked_leases_total", "counter",
  "Conns collected while still leased (closed, not blamed on the peer).", "leaked_leases")
family(POOL, "peerpool_policy_info", "gauge", "The pool's policy (label policy); always 1.",
  { "policy" }, function(t, e) e('policy="' .. safe_value(tostring(t.s.policy)) .. '"', 1) end)

-- Per-peer families (opt-in, top-N peers by traffic): their fn gets a peer view.
local function peer_simple(name, kind, help, field, scale)
  family(PEER, name, kind, help, {}, function(view, e)
    local v = view[field] or 0
    e(nil, scale and v / scale or v)
  end)
end
family(PEER, "peerpool_peer_state", "gauge", "1 for the peer's current state.", {},
  function(view, e) e('state="' .. view.state .. '"', 1) end)
peer_simple("peerpool_peer_connections", "gauge", "The peer's conns, open or connecting.",
  "conns")
peer_simple("peerpool_peer_idle_connections", "gauge", "The peer's conns with no lease.", "idle")
peer_simple("peerpool_peer_leases", "gauge", "Leases held on the peer's conns.", "leases")
peer_simple("peerpool_peer_pending_requests", "gauge", "Acquires queued for the peer.",
  "waiters")
peer_simple("peerpool_peer_consecutive_failures", "gauge",
  "The peer's failures since its last success (circuit breaker count).", "failures")
peer_simple("peerpool_peer_connection_attempts_total", "counter",
  "Connect attempts to the peer.", "attempts")
peer_simple("peerpool_peer_ejections_total", "counter", "Times the peer was ejected.",
  "ejections")
peer_simple("peerpool_peer_sent_bytes_total", "counter", "Bytes written to the peer.",
  "bytes_out")
peer_simple("peerpool_peer_received_bytes_total", "counter", "Bytes read from the peer.",
  "bytes_in")
peer_simple("peerpool_peer_writes_total", "counter", "Writes to the peer completed.", "msgs_out")
peer_simple("peerpool_peer_reads_total", "counter", "Reads from the peer delivered.", "msgs_in")
peer_simple("peerpool_peer_connection_create_time_seconds", "gauge",
  "Moving average of the peer's connect times (each new one weighs 0.2).", "latency_ms", 1000)
peer_simple("peerpool_peer_last_seen_timestamp_seconds", "gauge",
  "When the peer was last seen (Unix time; an address's freshness).", "last_seen", 1000)
peer_simple("peerpool_peer_last_success_timestamp_seconds", "gauge",
  "When a connect to the peer last succeeded (Unix time; 0: never).", "last_success", 1000)

-- ---- rendering ------------------------------------------------------------------------------

-- The `n` peers of `pool` with the most traffic (bytes both ways), busiest first; ties go to
-- more leases, then the address. A bounded min-heap: one pass over the peers.
local function busier(a, b) -- a ranks above b (t: its traffic)
  if a.t ~= b.t then return a.t > b.t end
  if a.leases ~= b.leases then return a.leases > b.leases end
  return a.addr < b.addr
end

local function top_peers(pool, n)
  local heap, size = {}, 0 -- heap[1] is the least busy kept
  for _, v in ipairs(pool:peers()) do
    local t = v.bytes_in + v.bytes_out
    v.t = t
    if size < n then
      size = size + 1
      local i = size
      heap[i] = v
      while i > 1 do
        local p = i // 2
        if busier(heap[p], heap[i]) then
          heap[p], heap[i] = heap[i], heap[p]
          i = p
        else
          break
        end
      end
    elseif t >= heap[1].t and busier(v, heap[1]) then
      heap[1] = v
      local i = 1
      while true do
        local l, r, m = 2 * i, 2 * i + 1, i
        if l <= size and busier(heap[m], heap[l]) then m = l end
        if r <= size and busier(heap[m], heap[r]) then m = r end
        if m == i then break end
        heap[m], heap[i] = heap[i], heap[m]
        i = m
      end
    end
  end
  sort(heap, busier)
  return heap
end

-- The stats fields no family shows (sorted): each gets an untyped family of its own, so that a
-- number the engine adds is exposed before it is given a name.
local function unmapped(s, into)
  for k, v in pairs(s) do
    if type(v) == "number" and not MAPPED[k] and type(k) == "string" and k:match("^[%w_]+$") then
      into[k] = true
    end
  end
end

-- The exposition of `targets` (lists of { s = stats, info = ..., base = label text }), each
-- family's HELP and TYPE once.
local function render(targets, per_peer, base)
  local out, n = {}, 0
  local function header(name, kind, help)
    out[n + 1] = "# HELP " .. name .. " " .. help
    out[n + 2] = "# TYPE " .. name .. " " .. kind
    n = n + 2
  end
  header("peerpool_build_info", "gauge", "The peerpool module's version (label version); always 1.")
  n = n + 1
  out[n] = "peerpool_build_info{" .. (base ~= "" and base .. "," or "") .. 'version="' ..
    escape(M.version) .. '"} 1'

  local name, tbase -- the family and the label text being written
  local function e(extra, value, suffix)
    local labels
    if extra then
      labels = tbase ~= "" and "{" .. tbase .. "," .. extra .. "}" or "{" .. extra .. "}"
    else
      labels = tbase ~= "" and "{" .. tbase .. "}" or ""
    end
    n = n + 1
    out[n] = name .. (suffix or "") .. labels .. " " .. num(value)
  end
  for _, f in ipairs(POOL) do
    header(f.name, f.kind, f.help)
    name = f.name
    for _, target in ipairs(targets) do
      tbase = target.base
      f.fn(target, e)
    end
  end
  local extra = {}
  for _, target in ipairs(targets) do unmapped(target.s, extra) end
  local keys = {}
  for k in pairs(extra) do keys[#keys + 1] = k end
  sort(keys)
  for _, k in ipairs(keys) do
    name = "peerpool_stats_" .. k
    header(name, "untyped", "pool:stats()." .. k .. " (no family of its own yet).")
    for _, target in ipairs(targets) do
      if type(target.s[k]) == "number" then
        tbase = target.base
        e(nil, target.s[k])
      end
    end
  end
  if per_peer > 0 then
    for _, target in ipairs(targets) do
      target.top = top_peers(target.pool, per_peer)
      target.peer_bases = {}
      for i, v in ipairs(target.top) do
        target.peer_bases[i] = (target.base ~= "" and target.base .. "," or "") .. 'peer="' ..
          safe_value(v.addr) .. '"'
      end
    end
    for _, f in ipairs(PEER) do
      local headed = false
      name = f.name
      for _, target in ipairs(targets) do
        for i, v in ipairs(target.top) do
          if not headed then
            header(f.name, f.kind, f.help)
            headed = true
          end
          tbase = target.peer_bases[i]
          f.fn(v, e)
        end
      end
    end
  end
  n = n + 1
  out[n] = ""
  return concat(out, "\n", 1, n)
end

local function info_of(pool)
  local i = info[pool]
  if not i then -- made before this module knew of it (cannot happen through peerpool.new)
    seq = seq + 1
    i = { seq = seq }
    for k, v in pairs(DEFAULT_LIMITS) do i[k] = v end
    info[pool] = i
  end
  return i
end

local function target(pool, base)
  return { pool = pool, s = pool:stats(), info = info_of(pool), base = base }
end

--- pool:metrics([labels] [, opts]): the pool's Prometheus text exposition (format 0.0.4).
-- `labels` (name = value) are added to every sample, e.g. { pool = "redis" }; opts.per_peer = N
-- adds per-peer families for the N peers with the most traffic (0..1000; default 0).
function pool_methods:metrics(labels, opts)
  check_pool(self, "metrics", true)
  local base = label_text(labels, "metrics", 1)
  local per_peer = check_opts(opts, "metrics", 2)
  return render({ target(self, base) }, per_peer, base)
end

-- The exposition of every open pool (shared by peerpool.metrics and the endpoint), in order of
-- creation, each labelled pool="<name>": a name given twice gets the pool's number appended.
local function render_all(base, per_peer)
  local pools = M.pools()
  sort(pools, function(a, b) return info_of(a).seq < info_of(b).seq end)
  local used, targets = {}, {}
  for i, pool in ipairs(pools) do
    local pi = info_of(pool)
    local name = pi.name or tostring(pi.seq)
    if used[name] then name = name .. "-" .. pi.seq end
    used[name] = true
    targets[i] = target(pool, (base ~= "" and base .. "," or "") .. 'pool="' .. escape(name) ..
      '"')
  end
  return render(targets, per_peer, base)
end

--- peerpool.metrics([labels] [, opts]): the exposition of every open pool, each sample
-- labelled pool="<name>" (option `name` of peerpool.new, else the pool's number in order of
-- creation); HELP and TYPE once per family. opts.per_peer as for pool:metrics.
function M.metrics(labels, opts)
  local base = label_text(labels, "metrics", 1, "pool")
  local per_peer = check_opts(opts, "metrics", 2)
  return render_all(base, per_peer)
end

-- ---- the /metrics endpoint ------------------------------------------------------------------
-- A small HTTP/1.1 responder on luv: GET or HEAD /metrics answers the exposition of every open
-- pool; anything else 404 or 405. What a client can make it hold is bounded: open conns
-- (max_clients; an idle kept-alive one makes room for a newcomer), a request's size
-- (max_request_bytes), the time a request may take to arrive (request_timeout, from the
-- connect or from its first byte), the wait for the next request (idle_timeout), and the time a
-- response may take to be written (write_timeout: a client that does not read is dropped).
-- One response at a time per conn; bytes that arrive meanwhile wait, within max_request_bytes.

local SERVE_DEFAULTS = {
  max_clients = 16, max_request_bytes = 8192, request_timeout = 5000, idle_timeout = 60000,
  write_timeout = 10000,
}
local SERVE_OPTS = { labels = true, per_peer = true }
for k in pairs(SERVE_DEFAULTS) do SERVE_OPTS[k] = true end

local REASONS = {
  [200] = "OK", [400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [503] = "Service Unavailable",
}
local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

local function traceback(e) return debug.traceback(tostring(e), 2) end

local Server = {}
Server.__index = Server

-- Close a client conn: its handle, its place in the table.
local function drop(srv, c, why)
  if c.closed then return end
  c.closed = true
  srv.clients[c] = nil
  srv.nclients = srv.nclients - 1
  if why then srv.counts[why] = (srv.counts[why] or 0) + 1 end
  if not c.tcp:is_closing() then c.tcp:close() end
  if srv.nclients == 0 and srv.janitor and not srv.janitor:is_closing() then
    srv.janitor:stop()
  end
end

local function response(status, body, close, head_only, extra)
  local h = {
    "HTTP/1.1 " .. status .. " " .. REASONS[status],
    "Content-Type: " .. (status == 200 and CONTENT_TYPE or "text/plain; charset=utf-8"),
    "Content-Length: " .. #body,
  }
  if extra then h[#h + 1] = extra end
  if close then h[#h + 1] = "Connection: close" end
  h[#h + 1] = "\r\n"
  return concat(h, "\r\n") .. (head_only and "" or body)
end

local process -- forward: handle what the client sent so far
local answer

local function send(srv, c, data, close)
  c.writing = true
  c.close_after = close
  c.deadline = uv.now() + srv.limits.write_timeout
  local ok = c.tcp:write(data, function(err)
    local good, e = xpcall(function()
      c.writing = false
      if c.closed then return end
      if err or c.close_after then return drop(srv, c, err and "write_error" or nil) end
      if c.buf == "" then -- waiting for a next request: no byte of it yet
        c.waiting, c.deadline = true, uv.now() + srv.limits.idle_timeout
      else -- one sent while this answer was written: its time starts now
        c.deadline = uv.now() + srv.limits.request_timeout
        process(srv, c)
      end
    end, traceback)
    if not good then
      emit("peerpool: error in the metrics endpoint: " .. e)
      drop(srv, c, "error")
    end
  end)
  if not ok then drop(srv, c, "write_error") end
end

-- Send a response, counted by status; the conn closes after it when `close`.
answer = function(srv, c, status, body, close, head_only, extra)
  srv.counts[status] = (srv.counts[status] or 0) + 1
  if close then c.tcp:read_stop() end
  send(srv, c, response(status, body, close, head_only, extra), close)
end

-- Answer the request in c.buf, if it is whole.
process = function(srv, c)
  if c.writing or c.closed then return end
  local buf = c.buf
  local stop = buf:find("\r\n\r\n", 1, true)
  local head_len = stop and stop + 3
  if not stop then
    stop = buf:find("\n\n", 1, true)
    head_len = stop and stop + 1
  end
  if not stop then
    if #buf > srv.limits.max_request_bytes then
      srv.counts.too_large = (srv.counts.too_large or 0) + 1
      return answer(srv, c, 431, "request too large\n", true)
    end
    return
  end
  if head_len > srv.limits.max_request_bytes then
    srv.counts.too_large = (srv.counts.too_large or 0) + 1
    return answer(srv, c, 431, "request too large\n", true)
  end
  c.buf = buf:sub(head_len + 1)
  local head = buf:sub(1, head_len)
  srv.counts.requests = srv.counts.requests + 1
  local method, uri, minor = head:match("^(%u+) (%S+) HTTP/1%.([01])\r?\n")
  if not method then return answer(srv, c, 400, "bad request\n", true) end
  local connection, has_body = nil, false
  for name, value in head:gmatch("\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    name = name:lower()
    if name == "connection" then
      connection = value:lower()
    elseif name == "transfer-encoding" or (name == "content-length" and value ~= "0") then
      has_body = true
    end
  end
  -- A body is never read: after the answer the conn closes instead of reading it as a request.
  local close = has_body or (connection and connection:find("close", 1, true) ~= nil) or
    (minor == "0" and not (connection and connection:find("keep-alive", 1, true)))
  local path = uri:match("^[^?#]*")
  local head_only = method == "HEAD"
  if path ~= "/metrics" then return answer(srv, c, 404, "not found: try /metrics\n", close) end
  if method ~= "GET" and not head_only then
    return answer(srv, c, 405, "method not allowed\n", close, false, "Allow: GET, HEAD")
  end
  local ok, text = xpcall(render_all, traceback, srv.base, srv.per_peer)
  if ok then return answer(srv, c, 200, text, close, head_only) end
  emit("peerpool: error in the metrics endpoint: " .. text)
  answer(srv, c, 500, "the exposition failed; see the program's error output\n", close, head_only)
end

local function on_read(srv, c, err, data)
  if c.closed then return end
  if err or not data then return drop(srv, c, err and "read_error" or nil) end
  if c.waiting and not c.writing then -- the first byte of a request: its time starts
    c.waiting = false
    c.deadline = uv.now() + srv.limits.request_timeout
  end
  if #c.buf + #data > srv.limits.max_request_bytes + 4 then
    if c.writing then return drop(srv, c, "too_large") end -- pipelined past the bound
    data = data:sub(1, srv.limits.max_request_bytes + 4 - #c.buf + 1)
  end
  c.buf = c.buf .. data
  process(srv, c)
end

-- Close conns past their deadline: a request too slow to arrive, a kept-alive conn idle too
-- long, a response the client does not read.
local function sweep(srv)
  local now = uv.now()
  for c in pairs(srv.clients) do
    if now >= c.deadline then
      local why = c.writing and "write_timeout" or (c.waiting and "idle_timeout") or
        "request_timeout"
      drop(srv, c, why)
    end
  end
end

local function accept(srv)
  local tcp = uv.new_tcp()
  if not tcp then return end
  if not srv.tcp:accept(tcp) then
    tcp:close()
    return
  end
  if srv.nclients >= srv.limits.max_clients then
    -- Make room by closing a conn with no request under way (kept alive, or silent since its
    -- connect), the one nearest its deadline; with none, turn this one away.
    local oldest
    for c in pairs(srv.clients) do
      if not c.writing and c.buf == "" and (not oldest or c.deadline < oldest.deadline) then
        oldest = c
      end
    end
    if not oldest then
      srv.counts.refused = (srv.counts.refused or 0) + 1
      tcp:close()
      return
    end
    drop(srv, oldest, "evicted")
  end
  local c = { tcp = tcp, buf = "", waiting = false, writing = false,
    deadline = uv.now() + srv.limits.request_timeout }
  srv.clients[c] = true
  srv.nclients = srv.nclients + 1
  if srv.unrefd then tcp:unref() end
  tcp:nodelay(true)
  tcp:read_start(function(err, data)
    local ok, e = xpcall(on_read, traceback, srv, c, err, data)
    if not ok then
      emit("peerpool: error in the metrics endpoint: " .. e)
      drop(srv, c, "error")
    end
  end)
  if not srv.janitor then
    srv.janitor = uv.new_timer()
    srv.janitor:unref() -- it alone never keeps the program running
  end
  if not srv.janitor:is_active() then
    local tick = math.max(10, math.min(500, srv.limits.request_timeout // 4,
      srv.limits.write_timeout // 4, srv.limits.idle_timeout // 4))
    srv.janitor:start(tick, tick, function()
      local ok, e = xpcall(sweep, traceback, srv)
      if not ok then emit("peerpool: error in the metrics endpoint: " .. e) end
    end)
  end
end

--- handle:close(): stop listening and close every client conn. Safe to call twice.
function Server:close()
  if self.closed then return false end
  self.closed = true
  for c in pairs(self.clients) do drop(self, c) end
  if not self.tcp:is_closing() then self.tcp:close() end
  if self.janitor and not self.janitor:is_closing() then self.janitor:close() end
  return true
end

--- handle:unref() / handle:ref(): whether the endpoint alone keeps the loop running (it does
-- by default, like a luv server); unref'd, its client conns do not either.
local function set_ref(self, ref)
  self.unrefd = not ref
  local method = ref and "ref" or "unref"
  if not self.tcp:is_closing() then self.tcp[method](self.tcp) end
  for c in pairs(self.clients) do c.tcp[method](c.tcp) end
  return self
end

function Server:unref() return set_ref(self, false) end
function Server:ref() return set_ref(self, true) end

--- handle:stats(): open client conns, requests read, responses by status, conns dropped by
-- reason (request_timeout, idle_timeout, write_timeout, too_large, evicted, refused, ...).
function Server:stats()
  local s = { clients = self.nclients }
  for k, v in pairs(self.counts) do s[k] = v end
  return s
end

function Server:__tostring()
  return fmt("peerpool.metrics_server (%s, %d clients)%s", self.url, self.nclients,
    self.closed and " closed" or "")
end

--- peerpool.serve_metrics([host] [, port] [, opts]): serve GET /metrics (every open pool's
-- exposition) on host (default 127.0.0.1; a numeric IPv4 or IPv6 address, or "localhost") and
-- port (default 9145; 0 picks a free one). Returns a handle (handle.port, handle.url,
-- :close(), :unref(), :ref(), :stats()), or nil, code, detail when it cannot listen.
-- opts: labels and per_peer as for peerpool.metrics, and the limits in SERVE_DEFAULTS.
function M.serve_metrics(host, port, opts)
  if host == nil or host == "localhost" then host = "127.0.0.1" end
  if type(host) ~= "string" then
    error("bad argument #1 to 'serve_metrics' (address string expected, got " .. type(host) ..
      ")", 2)
  end
  if port == nil then port = 9145 end
  if mtype(port) ~= "integer" or port < 0 or port > 65535 then
    error("bad argument #2 to 'serve_metrics' (port must be an integer in 0..65535)", 2)
  end
  local per_peer = check_opts(opts, "serve_metrics", 3, SERVE_OPTS)
  opts = opts or {}
  local limits = {}
  for k, v in pairs(SERVE_DEFAULTS) do
    local given = opts[k]
    if given ~= nil and (mtype(given) ~= "integer" or given < 1) then
      error("bad argument #3 to 'serve_metrics' (" .. k .. " must be a positive integer)", 2)
    end
    limits[k] = given or v
  end
  local base = label_text(opts.labels, "serve_metrics", 3, "pool")
  local tcp = uv.new_tcp()
  local srv = setmetatable({
    tcp = tcp, host = host, limits = limits, base = base, per_peer = per_peer, clients = {},
    nclients = 0, counts = { requests = 0 }, closed = false,
  }, Server)
  local ok, err, name = tcp:bind(host, port)
  if ok then
    ok, err, name = tcp:listen(64, function(lerr)
      if lerr or srv.closed then return end
      local good, e = xpcall(accept, traceback, srv)
      if not good then emit("peerpool: error in the metrics endpoint: " .. e) end
    end)
  end
  if not ok then
    tcp:close()
    return nil, name or "EINVAL", fmt("cannot serve metrics on %s port %d: %s", host, port,
      tostring(err))
  end
  srv.port = tcp:getsockname().port
  srv.url = fmt(host:find(":", 1, true) and "http://[%s]:%d/metrics" or "http://%s:%d/metrics",
    host, srv.port)
  return srv
end

return metrics
