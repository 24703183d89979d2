-- Policy hooks: loading and validation, hot reload, each hook's contract (select_peer,
-- select_conn, backoff, seed, handshake, ping), containment (raise, nonsense, runaway loops,
-- budgets, logs), and what policies drive: burning, ejection and return, freshness,
-- target_peers maintenance with seeding (the address book has spec/book_spec.lua).
local uv = require "luv"
local H = require "spec.support.helpers"
local P = require "spec.support.policy_helpers"
local peerpool = require "peerpool"

local test, pack, sleep, wait_until = P.test, H.pack, H.sleep, H.wait_until
local hook_stats, who, addrs_of = P.hook_stats, P.who, P.addrs_of

local function handshake_ok(conn)
  conn:send("VERSION spec\r\n")
  return conn:receive("*l") == "VERACK"
end

local HOOK_LIST =
  "hooks: backoff, handshake, peer_event, ping, route, seed, select_conn, select_peer"

describe("peerpool policy hooks", function()
  describe("policy tables", function()
    it("loads a table of hooks with a name and description; stats().policy says which",
      test(function(env)
        local pool = env:pool()
        assert.equal("built-in", pool:stats().policy)
        assert.is_true(pool:load_policy { name = "mine", description = "a test",
          select_peer = function() return 1 end })
        assert.equal("mine (table)", pool:stats().policy)
        local path = env:tmpname()
        P.write(path, "return { backoff = function() return 10 end }")
        assert.is_true(pool:load_policy(path))
        assert.equal(path, pool:stats().policy)
      end))

    it("keeps the built-in default for every hook left out", test(function(env)
      local srvs = env:many(2)
      local pool = env:pool { peers = addrs_of(srvs), policy = {} }
      for _ = 1, 4 do
        local conn = assert(pool:acquire())
        conn:release()
      end
      for _, h in pairs(pool:stats().hooks) do assert.same({ calls = 0, errors = 0 }, h) end
    end))

    it("refuses a key that is not a hook, naming it; the old policy stays", test(function(env)
      local pool = env:pool()
      assert.is_true(pool:load_policy { name = "old" })
      assert.same(
        { n = 3, nil, "invalid", "policy.selct_peer is not a hook (" .. HOOK_LIST .. ")" },
        pack(pool:load_policy { selct_peer = function() end }))
      assert.same({ n = 3, nil, "invalid", "policy.new is not a hook (" .. HOOK_LIST .. ")" },
        pack(pool:load_policy { new = function() end }))
      assert.equal("old (table)", pool:stats().policy)
    end))

    it("refuses a hook that is not a function, and a name or description that is not a string",
      test(function(env)
        local pool = env:pool()
        assert.same({ n = 3, nil, "invalid", "policy.backoff must be a function (got number)" },
          pack(pool:load_policy { backoff = 100 }))
        assert.same({ n = 3, nil, "invalid", "policy.name must be a string" },
          pack(pool:load_policy { name = 1 }))
        assert.same({ n = 3, nil, "invalid", "policy.description must be a string" },
          pack(pool:load_policy { description = {} }))
        assert.equal("built-in", pool:stats().policy)
      end))

    it("answers nil, 'invalid', err for a script with a syntax error; the old policy stays active",
      test(function(env)
        local pool = P.warm_pool(env, 2)
        local path = env:tmpname()
        P.write(path, "return { select_peer = function(peers) return 1 end }")
        assert.is_true(pool:load_policy(path))
        P.write(path, "return { select_peer = function(peers) return 1 end") -- edited, broken
        local ok, code, err = pool:load_policy(path)
        assert.equal("invalid", code)
        assert.is_nil(ok)
        assert.matches("^policy " .. path:gsub("%p", "%%%0") .. ":1: .*expected", err)
        assert.equal(path, pool:stats().policy)
        local calls = hook_stats(pool, "select_peer")
        local conn = assert(pool:acquire())
        conn:release()
        assert.equal(calls + 1, hook_stats(pool, "select_peer"))
      end))

    it("answers nil, 'invalid', err for a script that raises, returns no table or cannot be read",
      test(function(env)
        local pool = env:pool()
        local path = env:tmpname()
        P.write(path, "error('no config for you')")
        local ok, code, err = pool:load_policy(path)
        assert.equal("invalid", code)
        assert.is_nil(ok)
        assert.matches("no config for you", err, 1, true)
        P.write(path, "return 42")
        assert.same({ n = 3, nil, "invalid",
          "policy " .. path .. " must return a table of hooks (got number)" },
          pack(pool:load_policy(path)))
        ok, code, err = pool:load_policy(path .. ".missing")
        assert.equal("invalid", code)
        assert.is_nil(ok)
        assert.matches("No such file", err, 1, true)
        assert.equal("built-in", pool:stats().policy)
      end))

    it("raises naming the argument when given neither a path nor a table", test(function(env)
      local pool = env:pool()
      assert.error_matches(function() pool:load_policy(42) end,
        "bad argument #1 to 'load_policy' (path or table expected, got number)", nil, true)
    end))

    it("peerpool.new raises with the reason for a policy that does not load", function()
      assert.error_matches(function() peerpool.new { policy = { bogus = true } } end,
        "peerpool.new: policy.bogus is not a hook", nil, true)
      assert.error_matches(function() peerpool.new { policy = "/nonexistent/policy.lua" } end,
        "peerpool.new: policy cannot open /nonexistent/policy.lua", nil, true)
      assert(H.drain())
    end)

    it("swaps on a live pool without touching leased or idle conns", test(function(env)
      local pool, srv = env:static_pool("node")
      local held = assert(pool:acquire(srv.addr))
      local idle = assert(pool:acquire(srv.addr))
      idle:release()
      assert.equal(2, srv.accepted)
      assert.is_true(pool:load_policy { handshake = handshake_ok,
        select_conn = function() return 1 end })
      -- the held conn still works, and the idle one is lent again (no handshake: it is not new)
      assert.equal(who(held), 1)
      local again = assert(pool:acquire(srv.addr))
      assert.equal(2, who(again))
      again:release()
      held:release()
      assert.equal(2, srv.accepted)
      assert.equal(0, hook_stats(pool, "handshake"))
      local s = pool:stats()
      for reason, n in pairs(s.closed) do assert.equal(0, n, reason) end
    end))
  end)

  describe("select_peer(peers, ctx)", function()
    it("chooses the peer to dial, seeing views of the dialable peers and ctx.dialing = true",
      test(function(env)
        local srvs = env:many(2)
        local pool = env:pool { peers = { srvs[2].addr } }
        local seen_at = os.time() * 1000 - 1000
        pool:add_peer(srvs[1].addr, seen_at, { zone = "a" })
        local seen
        assert(pool:load_policy { select_peer = function(peers, ctx)
          seen = { n = #peers, key = ctx.key, dialing = ctx.dialing }
          for i = 1, #peers do
            local p = peers[i]
            seen[p.addr] = { addr = p.addr, state = p.state, leases = p.leases,
              idle_ms = p.idle_ms, latency_ms = p.latency_ms, failures = p.failures,
              tags = p.tags, source = p.source, conns = p.conns, idle = p.idle,
              waiters = p.waiters, last_seen = p.last_seen }
          end
          for i = 1, #peers do if peers[i].addr == srvs[2].addr then return peers[i] end end
        end })
        local conn = assert(pool:acquire(nil, { key = "user:1" }))
        assert.equal(srvs[2].addr, conn.peer)
        assert.equal(2, seen.n)
        assert.equal("user:1", seen.key)
        assert.is_true(seen.dialing)
        local a, b = seen[srvs[1].addr], seen[srvs[2].addr]
        assert.same({ zone = "a" }, a.tags)
        assert.equal("runtime", a.source)
        assert.equal("static", b.source)
        assert.is_nil(b.tags)
        assert.equal(seen_at, a.last_seen)
        assert.is_true(math.abs(b.last_seen - os.time() * 1000) < 5000)
        local unused = { state = "known", leases = 0, conns = 0, idle = 0, waiters = 0,
          failures = 0, idle_ms = 0, latency_ms = 0 }
        assert.same(unused, H.pick(a, unused))
        assert.same(unused, H.pick(b, unused))
        conn:release()
      end))

    it("chooses among peers with a usable conn, with ctx.dialing = false", test(function(env)
      local pool = P.warm_pool(env, 3)
      local seen
      assert(pool:load_policy { select_peer = function(peers, ctx)
        seen = { dialing = ctx.dialing, key = ctx.key }
        for i = 1, #peers do
          seen[i] = { state = peers[i].state, idle = peers[i].idle, conns = peers[i].conns }
        end
        return #peers
      end })
      local conn = assert(pool:acquire())
      assert.is_false(seen.dialing)
      assert.is_nil(seen.key)
      assert.equal(3, #seen)
      for i = 1, 3 do assert.same({ state = "ready", idle = 1, conns = 1 }, seen[i]) end
      conn:release()
      assert.equal(3, pool:stats().conns)
    end))

    it("is obeyed: the chosen index or view serves the acquire", test(function(env)
      local pool, srvs = P.warm_pool(env, 3)
      local want = srvs[2].addr
      local function find(peers)
        for i = 1, #peers do if peers[i].addr == want then return i end end
      end
      assert(pool:load_policy { select_peer = function(peers) return find(peers) end })
      for _ = 1, 3 do
        local conn = assert(pool:acquire())
        assert.equal(want, conn.peer)
        conn:release()
      end
      assert(pool:load_policy { select_peer = function(peers) return peers[find(peers)] end })
      for _ = 1, 3 do
        local conn = assert(pool:acquire())
        assert.equal(want, conn.peer)
        conn:release()
      end
      assert.same({ 6, 0 }, { hook_stats(pool, "select_peer") })
    end))

    it("accepts an index given as a float with an integral value, as Lua's own functions do",
      test(function(env)
        local pool = P.warm_pool(env, 2)
        assert(pool:load_policy { select_peer = function(peers) return #peers / 2 end }) -- 1.0
        local conn = assert(pool:acquire())
        conn:release()
        assert.same({ 1, 0 }, { hook_stats(pool, "select_peer") })
      end))

    it("is not asked when there is only one candidate", test(function(env)
      local pool = env:static_pool("line")
      assert(pool:load_policy { select_peer = function() error("asked") end })
      for _ = 1, 3 do
        local conn = assert(pool:acquire())
        conn:release()
      end
      assert.same({ 0, 0 }, { hook_stats(pool, "select_peer") })
    end))

    it("sees at most 64 candidates, a window that moves through the pool", test(function(env)
      local srvs = env:many(100, "echo")
      local pool = env:pool { peers = addrs_of(srvs) }
      local sizes, seen, distinct = {}, {}, 0
      assert(pool:load_policy { select_peer = function(peers)
        sizes[#sizes + 1] = #peers
        for i = 1, #peers do
          local addr = peers[i].addr
          if not seen[addr] then seen[addr], distinct = true, distinct + 1 end
        end
        return 1
      end })
      local held = {}
      for i = 1, 3 do held[i] = assert(pool:acquire()) end
      assert.same({ 64, 64, 64 }, sizes)
      assert.is_true(distinct > 64, "the window did not move: " .. distinct .. " peers seen")
      for _, conn in ipairs(held) do conn:release() end
    end))

    it("gets views that are read-only and valid only during the call", test(function(env)
      local srvs = env:many(2)
      local pool = env:pool { peers = addrs_of(srvs) }
      local kept, write_ok, write_err
      assert(pool:load_policy { select_peer = function(peers)
        kept = peers[1]
        write_ok, write_err = pcall(function() peers[1].addr = "10.0.0.1:1" end)
        return 1
      end })
      local conn = assert(pool:acquire())
      conn:release()
      assert.is_false(write_ok)
      assert.is_string(write_err)
      assert.matches("^peerpool.view %(expired%)$", tostring(kept))
      assert.error_matches(function() return kept.addr end,
        "a candidate view is valid only during the hook call", nil, true)
    end))
  end)

  describe("select_conn(conns, ctx)", function()
    it("chooses among a peer's usable conns, seeing their leases and idle_ms", test(function(env)
      local pool, srv = env:static_pool("node")
      local a = assert(pool:acquire(srv.addr))
      local b = assert(pool:acquire(srv.addr))
      assert.same({ 1, 2 }, { who(a), who(b) })
      a:release()
      sleep(30)
      b:release() -- conn 1 has idled longer: the default would lend it
      local seen
      assert(pool:load_policy { select_conn = function(conns, ctx)
        seen = { n = #conns, key = ctx.key, dialing = ctx.dialing }
        local best
        for i = 1, #conns do
          seen[i] = { leases = conns[i].leases, idle_ms = conns[i].idle_ms, addr = conns[i].addr }
          if best == nil or conns[i].idle_ms < conns[best].idle_ms then best = i end
        end
        return conns[best] -- the most recently used
      end })
      local conn = assert(pool:acquire(srv.addr, { key = "k" }))
      assert.equal(2, who(conn))
      assert.equal(2, seen.n)
      assert.equal("k", seen.key)
      assert.is_false(seen.dialing)
      for i = 1, 2 do
        assert.equal(0, seen[i].leases)
        assert.equal(srv.addr, seen[i].addr)
      end
      assert.is_true(math.max(seen[1].idle_ms, seen[2].idle_ms) >= 25)
      conn:release()
    end))

    it("sees shared conns' lease counts (client_limit > 1)", test(function(env)
      local pool, srv = env:static_pool("node", { client_limit = 3, max_per_peer = 2 })
      local leases = {}
      assert(pool:load_policy { select_conn = function(conns)
        leases = {}
        for i = 1, #conns do leases[i] = conns[i].leases end
        table.sort(leases)
        return 1
      end })
      -- two conns: dial one, force a second while the first is held by three
      local held = {}
      for i = 1, 3 do held[i] = assert(pool:acquire(srv.addr)) end
      held[4] = assert(pool:acquire(srv.addr))
      assert.equal(2, srv.accepted)
      held[1]:release()
      held[2]:release() -- conn 1 has 1 lease, conn 2 has 1 lease
      local c = assert(pool:acquire(srv.addr))
      assert.same({ 1, 1 }, leases)
      c:release()
      for i = 3, 4 do held[i]:release() end
    end))
  end)

  describe("backoff(attempt, err, peer)", function()
    it("is called after each failed attempt with the attempt, the error code and a peer view",
      test(function(env)
        local pool, srv = env:static_pool("refused", { retries = 2 })
        local calls = {}
        assert(pool:load_policy { backoff = function(attempt, err, peer)
          calls[#calls + 1] = { attempt, err, peer.addr, peer.attempts, type(peer.latency_ms) }
          return 1
        end })
        local conn, err = pool:acquire(srv.addr)
        assert.is_nil(conn)
        assert.equal("cannot_connect", err)
        assert.same({
          { 1, "ECONNREFUSED", srv.addr, 1, "number" },
          { 2, "ECONNREFUSED", srv.addr, 2, "number" },
          { 3, "ECONNREFUSED", srv.addr, 3, "number" },
        }, calls)
      end))

    it("delays the next attempt by the milliseconds it answers", test(function(env)
      local pool, srv = env:static_pool("refused", { retries = 2 })
      assert(pool:load_policy { backoff = function() return 60 end })
      local t0 = uv.now()
      assert.equal("cannot_connect", select(2, pool:acquire(srv.addr)))
      local elapsed = uv.now() - t0
      assert.is_true(elapsed >= 115 and elapsed < 1000, "took " .. elapsed .. " ms")
      -- the answer after the last attempt sets the peer's retry time
      local retry = pool:peer(srv.addr).retry_in_ms
      assert.is_true(retry ~= nil and retry > 0 and retry <= 60)
    end))

    it("is called for a failed handshake (handshake_failed) and one that times out (timeout)",
      test(function(env)
        local bad, silent = env:node { answer = "NOPE" }, env:node()
        local pool = env:pool { peers = { bad.addr, silent.addr }, retries = 0,
          handshake_timeout = 50 }
        local errs = {}
        assert(pool:load_policy {
          handshake = function(conn)
            conn:send(conn.peer == silent.addr and "SILENT\r\n" or "VERSION x\r\n")
            return conn:receive("*l") == "VERACK"
          end,
          backoff = function(_, err, peer) errs[peer.addr] = err; return 1 end,
        })
        assert.equal("cannot_connect", select(2, pool:acquire(bad.addr)))
        assert.equal("cannot_connect", select(2, pool:acquire(silent.addr)))
        assert.same({ [bad.addr] = "handshake_failed", [silent.addr] = "timeout" }, errs)
      end))
  end)

  describe("seed(ctx)", function()
    it("is asked for addresses when an acquire for any peer finds none; the acquire waits for them",
      test(function(env)
        local srv = env:line()
        local pool = env:pool()
        local wanted
        assert(pool:load_policy { seed = function(ctx)
          wanted = ctx.wanted
          assert.equal(srv.addr, ctx:add(srv.addr))
        end })
        local conn = assert(pool:acquire())
        assert.equal(srv.addr, conn.peer)
        assert.equal(1, wanted)
        conn:release()
        assert.equal(1, pool:stats().seeds)
        assert.same({ 1, 0 }, { hook_stats(pool, "seed") })
      end))

    it("ctx:add takes last_seen, answers the canonical address, or nil, 'invalid', why",
      test(function(env)
        local pool = env:pool { target_peers = 1, maintenance_interval = 10 }
        local res = {}
        assert(pool:load_policy { seed = function(ctx)
          res.a = pack(ctx:add("[0:0::1]:7", 1700000000000))
          res.b = pack(ctx:add("bad..name:80"))
          res.c = pack(ctx:add("127.0.0.1:9", nil))
        end })
        wait_until(function() return res.c end, 2000, "the seed hook")
        assert.equal("[::1]:7", res.a[1])
        assert.same({ n = 3, nil, "invalid",
          "host must be an IPv4 address or a host name (letters, digits, '-', '_', dots)" }, res.b)
        assert.equal("127.0.0.1:9", res.c[1])
        assert.equal(1700000000000, pool:peer("[::1]:7").last_seen)
      end))

    it("ctx:resolve(host, port) resolves through the loop (the hook waits as a coroutine)",
      test(function(env)
        local srv = env:line()
        local pool = env:pool { target_peers = 1, maintenance_interval = 10 }
        local got
        assert(pool:load_policy { seed = function(ctx)
          local list = ctx:resolve("localhost", srv.port)
          local bad = pack(ctx:resolve("bad..name", 80))
          for _, addr in ipairs(list or {}) do ctx:add(addr) end
          got = { list = list, bad = bad }
        end })
        wait_until(function() return got end, 3000, "the seed hook")
        assert.is_table(got.list)
        local found = false
        for _, addr in ipairs(got.list) do found = found or addr == srv.addr end
        assert.is_true(found)
        assert.is_nil(got.bad[1])
        assert.equal("EAI_NONAME", got.bad[2])
        wait_until(function() return pool:peer(srv.addr).state == "ready" end, 2000, "the dial")
      end))

    it("is called at most once per seed_interval", test(function(env)
      local pool = env:pool { seed_interval = 100000, acquire_timeout = 30 }
      local n = 0
      assert(pool:load_policy { seed = function() n = n + 1 end })
      for _ = 1, 3 do assert.equal("timeout", select(2, pool:acquire())) end
      assert.equal(1, n)
      assert.equal(1, pool:stats().seeds)
    end))

    it("marks the peers it adds as source 'seed'", test(function(env)
      local srvs = env:many(2)
      local pool = env:pool()
      local sources = {}
      assert(pool:load_policy {
        seed = function(ctx) for _, s in ipairs(srvs) do ctx:add(s.addr) end end,
        select_peer = function(peers)
          for i = 1, #peers do sources[peers[i].addr] = peers[i].source end
          return 1
        end,
      })
      local conn = assert(pool:acquire())
      conn:release()
      assert.same({ [srvs[1].addr] = "seed", [srvs[2].addr] = "seed" }, sources)
    end))
  end)

  describe("handshake(conn)", function()
    it("runs on each new conn as a coroutine; true makes the peer ready", test(function(env)
      local pool, srv = env:static_pool("node")
      local states = {}
      pool:on("state", function(_, from, to) states[#states + 1] = from .. ">" .. to end)
      local peer_seen
      assert(pool:load_policy { handshake = function(conn)
        peer_seen = conn.peer
        assert(conn:send("VERSION 70016\r\n"))
        return conn:receive("*l") == "VERACK"
      end })
      local conn = assert(pool:acquire(srv.addr))
      assert.equal(srv.addr, peer_seen)
      assert.same({ "70016" }, srv.versions)
      assert.equal(1, who(conn)) -- the conn lent is the one that shook hands
      conn:release()
      wait_until(function() return #states >= 3 end, 1000, "state events")
      assert.same({ "known>connecting", "connecting>connected", "connected>ready" }, states)
      assert.same({ 1, 0 }, { hook_stats(pool, "handshake") })
    end))

    it("false fails the attempt: it counts toward retries and backoff (handshake_failed)",
      test(function(env)
        local srv = env:node { answer = "NOPE" }
        local pool = env:pool { peers = { srv.addr }, retries = 1 }
        local errs = {}
        assert(pool:load_policy {
          handshake = handshake_ok,
          backoff = function(attempt, err) errs[attempt] = err; return 1 end,
        })
        local conn, err, detail = pool:acquire(srv.addr)
        assert.is_nil(conn)
        assert.equal("cannot_connect", err)
        assert.matches("handshake_failed", detail, 1, true)
        assert.same({ "handshake_failed", "handshake_failed" }, errs)
        assert.equal(2, srv.accepted)
        assert.equal("failed", pool:peer(srv.addr).state)
      end))

    it("fails the attempt when it outlives handshake_timeout", test(function(env)
      local pool, srv = env:static_pool("node", { retries = 0, handshake_timeout = 60 })
      local got
      assert(pool:load_policy { handshake = function(conn)
        conn:send("SILENT\r\n")
        got = pack(conn:receive("*l")) -- ends when the pool gives up on the conn
        return true
      end })
      local t0 = uv.now()
      assert.equal("cannot_connect", select(2, pool:acquire(srv.addr)))
      assert.is_true(uv.now() - t0 >= 55)
      wait_until(function() return got end, 1000, "the hook's receive to end")
      assert.same({ n = 3, nil, "closed", "" }, got)
      assert.equal("timeout", peerpool.errors.timeout)
    end))

    it("lends a conn that can send and receive but not be released or closed", test(function(env)
      local pool, srv = env:static_pool("node")
      local kept, rel, clo
      assert(pool:load_policy { handshake = function(conn)
        kept = conn
        rel = pack(pcall(conn.release, conn))
        clo = pack(pcall(conn.close, conn))
        return handshake_ok(conn)
      end })
      local conn = assert(pool:acquire(srv.addr))
      conn:release()
      assert.is_false(rel[1])
      assert.matches("a hook's conn goes back to the pool when the hook returns", rel[2], 1, true)
      assert.is_false(clo[1])
      assert.matches("a hook fails its conn by returning false (or raising)", clo[2], 1, true)
      assert.error_matches(function() kept:send("late") end, "attempt to use a released conn",
        nil, true)
    end))
  end)

  describe("ping(conn)", function()
    local function ping(conn)
      conn:send("PING\r\n")
      return conn:receive("*l") == "PONG"
    end

    it("checks a conn that idled longer than ping_after before lending it", test(function(env)
      local pool, srv = env:static_pool("node", { ping_after = 20, max_per_peer = 1 })
      assert(pool:load_policy { ping = ping })
      local conn = assert(pool:acquire(srv.addr))
      conn:release()
      conn = assert(pool:acquire(srv.addr)) -- not idle long enough: no ping
      conn:release()
      assert.equal(0, pool:stats().pings)
      sleep(40)
      conn = assert(pool:acquire(srv.addr))
      assert.equal(1, who(conn))
      conn:release()
      assert.equal(1, pool:stats().pings)
      assert.same({ 1, 0 }, { hook_stats(pool, "ping") })
    end))

    it("closes a conn whose ping fails; the acquire gets another conn", test(function(env)
      local pool, srv = env:static_pool("node", { ping_after = 20, max_per_peer = 1 })
      assert(pool:load_policy { ping = function() return false end })
      local conn = assert(pool:acquire(srv.addr))
      conn:release()
      sleep(40)
      conn = assert(pool:acquire(srv.addr))
      assert.equal(2, who(conn))
      conn:release()
      local s = pool:stats()
      assert.equal(1, s.pings_failed)
      assert.equal(1, s.closed.ping)
    end))

    it("pings idle conns every keepalive ms", test(function(env)
      local pool, srv = env:static_pool("node", { keepalive = 20 })
      assert(pool:load_policy { ping = ping })
      local conn = assert(pool:acquire(srv.addr))
      conn:release()
      wait_until(function() return pool:stats().pings >= 2 end, 2000, "two keepalive pings")
      assert.equal(0, pool:stats().pings_failed)
      assert.equal(1, srv.accepted)
    end))
  end)

  describe("containment", function()
    local function two_warm(env, opts) return P.warm_pool(env, 2, opts) end

    local function serves(pool, n)
      for _ = 1, n or 3 do
        local conn = assert(pool:acquire())
        conn:release()
      end
    end

    -- Load `select_peer` into pool and serve n acquires for any peer; the hook's calls and
    -- errors so far.
    local function select_runs(pool, select_peer, n)
      assert(pool:load_policy { select_peer = select_peer })
      serves(pool, n)
      return hook_stats(pool, "select_peer")
    end

    -- Load `handshake` into a new pool (opts, retries = 0) on a node server and acquire once: the
    -- acquire's error code (nil when it got a conn, then released) and the hook's calls and
    -- errors.
    local function handshake_runs(env, handshake, opts)
      local srv = env:node()
      opts = opts or {}
      opts.peers, opts.retries = { srv.addr }, 0
      local pool = env:pool(opts)
      assert(pool:load_policy { handshake = handshake })
      local conn, code = pool:acquire(srv.addr)
      if conn then conn:release() end
      return code, hook_stats(pool, "handshake")
    end

    it("a select hook that raises is cut off; the default decides; errors are counted",
      test(function(env)
        local pool = two_warm(env)
        assert.same({ 5, 5 }, { select_runs(pool, function() error("boom") end, 5) })
        assert.same({ 6, 6 }, { select_runs(pool, function() error({ "not a string" }) end, 1) })
      end))

    it("nonsense answers from select hooks fall back to the default", test(function(env)
      local pool = two_warm(env)
      local answers = { "banana", 0, 3, -1, 1.5, {}, true, false, function() end }
      for i, answer in ipairs(answers) do
        assert.same({ i, i }, { select_runs(pool, function() return answer end, 1) },
          "answer " .. tostring(answer))
      end
      -- a view of another pool's hook call is not a candidate either
      local other = two_warm(env)
      local foreign
      select_runs(other, function(peers) foreign = peers[1]; return 1 end, 1)
      local n = #answers + 1
      assert.same({ n, n }, { select_runs(pool, function() return foreign end, 1) })
    end))

    it("nonsense backoff answers fall back to the built-in backoff", test(function(env)
      local srv = env:refused()
      local answers = { "soon", -5, 0 / 0, math.huge, true, {}, 366 * 24 * 3600 * 1000 }
      for _, answer in ipairs(answers) do
        local pool = env:pool { peers = { srv.addr }, retries = 0 }
        assert(pool:load_policy { backoff = function() return answer end })
        assert.equal("cannot_connect", select(2, pool:acquire(srv.addr)))
        assert.same({ 1, 1 }, { hook_stats(pool, "backoff") }, "answer " .. tostring(answer))
        -- the built-in delay: at most 200 ms after a first failure
        local retry = pool:peer(srv.addr).retry_in_ms or 0
        assert.is_true(retry <= 200, "retry in " .. retry)
      end
    end))

    it("a runaway select hook is stopped by its instruction budget", test(function(env)
      local pool = two_warm(env)
      local t0 = uv.hrtime()
      assert.same({ 3, 3 }, { select_runs(pool, function() while true do end end, 3) })
      assert.is_true((uv.hrtime() - t0) / 1e6 < 500)
    end))

    it("a runaway backoff, seed or handshake is stopped by its budget", test(function(env)
      local srv, refused = env:node(), env:refused()
      local pool = env:pool { peers = { refused.addr }, retries = 0 }
      assert(pool:load_policy { backoff = function() while true do end end })
      assert.equal("cannot_connect", select(2, pool:acquire(refused.addr)))
      assert.same({ 1, 1 }, { hook_stats(pool, "backoff") })

      local p2 = env:pool { acquire_timeout = 50 }
      assert(p2:load_policy { seed = function() while true do end end })
      assert.equal("timeout", select(2, p2:acquire()))
      assert.same({ 1, 1 }, { hook_stats(p2, "seed") })

      local p3 = env:pool { peers = { srv.addr }, retries = 0 }
      assert(p3:load_policy { handshake = function() while true do end end })
      local conn, err, detail = p3:acquire(srv.addr)
      assert.is_nil(conn)
      assert.equal("cannot_connect", err)
      assert.matches("handshake_failed", detail, 1, true)
      assert.same({ 1, 1 }, { hook_stats(p3, "handshake") })
    end))

    it("a hook that raises a table is reported by the table's type", test(function(env)
      local logged = {}
      peerpool.on_error(function(msg) logged[#logged + 1] = msg end)
      local code = handshake_runs(env, function() error({ code = 7 }) end)
      peerpool.on_error(nil)
      assert.equal("cannot_connect", code)
      assert.matches("policy hook handshake (table) failed: (error object is a table value)",
        logged[1], 1, true)
    end))

    it("a handshake resumed by its own luv timer still answers (and is wrapped up)",
      test(function(env)
        local srv = env:node()
        local pool = env:pool { peers = { srv.addr }, retries = 0, handshake_timeout = 2000,
          policy = { handshake = function()
            local co, t = coroutine.running(), uv.new_timer()
            t:start(10, 0, function()
              t:close()
              coroutine.resume(co) -- the luv way, not the binding's
            end)
            coroutine.yield()
            return true
          end } }
        local t0 = uv.hrtime()
        local conn = assert(pool:acquire(srv.addr))
        assert.is_true((uv.hrtime() - t0) / 1e6 < 1000, "the answer was lost until a timeout")
        conn:release()
        assert.same({ 1, 0 }, { hook_stats(pool, "handshake") })
      end))

    it("an error reporter cannot close the pool in the middle of a hook's decision",
      test(function(env)
        local pool, srv = env:static_pool("node", { max_per_peer = 2 })
        local a, b = assert(pool:acquire(srv.addr)), assert(pool:acquire(srv.addr))
        a:release()
        b:release() -- two idle conns: the next acquire asks select_conn
        assert(pool:load_policy { select_conn = function() return 99 end }) -- nonsense
        local refused
        peerpool.on_error(function()
          refused = select(2, pcall(pool.close, pool))
        end)
        local conn = assert(pool:acquire(srv.addr))
        peerpool.on_error(nil)
        assert.matches("a policy hook cannot change its pool", refused, 1, true)
        conn:release()
      end))

    it("a hook that catches its budget error with pcall is still stopped", test(function(env)
      local pool = two_warm(env)
      assert.same({ 2, 2 }, { select_runs(pool, function()
        while true do pcall(function() while true do end end) end
      end, 2) })
      assert.same({ "cannot_connect", 1, 1 }, { handshake_runs(env, function()
        while true do pcall(function() while true do end end) end
      end) })
    end))

    it("coroutines a hook starts charge the same budget", test(function(env)
      local pool = two_warm(env, { hook_budget = 1000 })
      local spun = 0
      assert.same({ 1, 1 }, { select_runs(pool, function()
        for _ = 1, 1000000 do
          coroutine.wrap(function() for _ = 1, 300 do spun = spun + 1 end end)()
        end
      end, 1) })
      assert.is_true(spun < 5000, "the hook's coroutines ran " .. spun .. " loops")
    end))

    it("a hook that allocates without bound stops at hook_memory", test(function(env)
      local pool = two_warm(env, { hook_budget = 100000000, hook_memory = 1024 * 1024 })
      local logged = {}
      peerpool.on_error(function(msg) logged[#logged + 1] = msg end)
      local before = collectgarbage("count")
      assert.same({ 1, 1 }, { select_runs(pool, function()
        local t = {}
        for i = 1, 1e8 do t[i] = { i } end
        return t[1]
      end, 1) })
      peerpool.on_error(nil)
      assert.matches("not enough memory", logged[1] or "", 1, true)
      assert.is_true(collectgarbage("count") - before < 8 * 1024, "the hook grew the heap")
    end))

    it("refuses os.exit, io.read, debug.sethook and binary chunks inside a hook",
      test(function(env)
        local fifo = os.tmpname()
        os.remove(fifo)
        assert(os.execute("mkfifo " .. fifo))
        local pool = two_warm(env)
        local results = {}
        assert(pool:load_policy { select_peer = function()
          for name, fn in pairs {
            exit = function() os.exit(3) end,
            read = function() return io.read("l") end,
            lines = function() return io.lines()() end,
            sethook = function() debug.sethook() end,
            binary = function() return assert(load(string.dump(function() end))) end,
            stop = function() collectgarbage("stop") end,
            popen = function() return io.popen("true") end,
            loadlib = function() return package.loadlib("libc.so.6", "abort") end,
            fifo = function() return io.lines(fifo) end,
          } do
            local ok, err = pcall(fn)
            results[name] = not ok and err or "allowed"
          end
          local chunk = load("return 1 + 1") -- text chunks are fine
          results.text = chunk and chunk()
          return 1
        end })
        serves(pool, 1)
        for _, name in ipairs { "exit", "read", "lines", "sethook", "stop", "popen", "loadlib",
          "fifo" } do
          assert.matches("not available inside a policy hook", results[name], 1, true)
        end
        assert.matches("attempt to load a binary chunk", results.binary, 1, true)
        assert.equal(2, results.text)
        assert.is_true(collectgarbage("isrunning"))
        assert.is_function(debug.sethook) -- outside hooks everything is as it was
        assert.is_function(load(string.dump(function() end)))
        os.remove(fifo)
      end))

    it("a synchronous hook that yields is cut off", test(function(env)
      local pool = two_warm(env)
      assert.same({ 2, 2 }, { select_runs(pool, function() coroutine.yield() return 1 end, 2) })
    end))

    it("hook_budget sets the budget; asynchronous hooks get ten times as much", test(function(env)
      local function spin() -- about 4000 instructions
        local x = 0
        for i = 1, 2000 do x = x + i end
        return x > 0
      end
      local pool = two_warm(env, { hook_budget = 1000 })
      assert.same({ 1, 1 }, { select_runs(pool, function() spin() return 1 end, 1) })
      assert.same({ 1, 0 }, { select_runs(two_warm(env), function() spin() return 1 end, 1) })
      assert.same({ nil, 1, 0 }, { handshake_runs(env,
        function(conn) return spin() and handshake_ok(conn) end, { hook_budget = 1000 }) })
    end))

    it("a handshake that raises fails the attempt; a ping that raises closes the conn",
      test(function(env)
        assert.same({ "cannot_connect", 1, 1 },
          { handshake_runs(env, function() error("bad hello") end) })
        local srv = env:node()
        local p2 = env:pool { peers = { srv.addr }, ping_after = 10 }
        assert(p2:load_policy { ping = function() error("bad ping") end })
        local conn = assert(p2:acquire(srv.addr))
        conn:release()
        sleep(25)
        conn = assert(p2:acquire(srv.addr))
        conn:release()
        assert.same({ 1, 1 }, { hook_stats(p2, "ping") })
        assert.equal(1, p2:stats().closed.ping)
      end))

    -- Run `body` in a child process (P.child, killed after `secs`) after a prelude that gives it
    -- peerpool, uv and two line servers `a` and `b`; after the body the servers are closed, the
    -- loop runs until it is empty, and the child prints "survived". Returns status, out, err.
    local function child_with_two_servers(body, secs)
      return P.child([[
        local peerpool = require "peerpool"
        local servers = require "spec.support.servers"
        local uv = require "luv"
        local a, b = servers.line(), servers.line()
      ]] .. body .. [[
        a:close(); b:close()
        uv.run()
        print("survived")
      ]], secs)
    end

    it("logs a failure with the hook and the script, at most once a second per hook", function()
      local status, out, err = child_with_two_servers([[
        local path = os.tmpname()
        local f = io.open(path, "w")
        f:write("return { select_peer = function() error('kaboom') end }")
        f:close()
        local pool = peerpool.new { peers = { a.addr, b.addr }, policy = path }
        peerpool.run(function()
          for _, s in ipairs { a, b } do pool:acquire(s.addr):release() end
          for _ = 1, 5 do pool:acquire():release() end
          local t = uv.new_timer()
          local co = coroutine.running()
          t:start(1100, 0, function() t:close(); coroutine.resume(co) end)
          coroutine.yield()
          pool:acquire():release()
        end)
        print(path, pool:stats().hooks.select_peer.errors)
        pool:close(); os.remove(path)
      ]])
      assert.equal(0, status, err)
      local path, errors = out:match("^(%S+)%s+(%d+)")
      assert.equal("6", errors)
      local lines = {}
      for line in err:gmatch("[^\n]+") do
        if line:find("policy hook", 1, true) then lines[#lines + 1] = line end
      end
      assert.equal(2, #lines, err)
      local prefix = "peerpool: policy hook select_peer (" .. path .. ") failed: "
      assert.equal(prefix, lines[1]:sub(1, #prefix))
      assert.matches("kaboom", lines[1], 1, true)
      assert.matches("; using the default$", lines[1])
      assert.matches("(4 more since the last report); using the default", lines[2], 1, true)
    end)

    it("a hook that tries to close its own pool is refused, and the pool serves on", function()
      local status, out, err = child_with_two_servers([[
        local pool
        local refused
        pool = peerpool.new { peers = { a.addr, b.addr }, policy = {
          select_peer = function()
            local ok, e = pcall(pool.close, pool)
            refused = refused or (not ok and e)
            pool:close() -- uncaught this time: the hook is cut off
            return 1
          end } }
        peerpool.run(function()
          local conn, e = pool:acquire()
          print("acquire", conn ~= nil, e)
          if conn then conn:release() end
        end)
        print("refused", refused)
        print("errors", pool:stats().hooks.select_peer.errors)
        pool:close()
      ]])
      assert.equal(0, status, "exit status " .. tostring(status) .. "\n" .. err)
      assert.matches("survived", out, 1, true)
      -- the pool stays open and serves; the hook's attempt is refused and counted
      assert.matches("acquire\ttrue", out, 1, true)
      assert.matches("refused\t[^\n]*a policy hook cannot change its pool", out)
      assert.matches("errors\t1", out, 1, true)
    end)

    it("a hook that calls back into its pool keeps its budget", function()
      -- The engine's hooks must not re-enter the pool. If a Lua hook does (here: an acquire with
      -- a callback), the nested hook call must not switch off the outer call's budget.
      local status, out, err = child_with_two_servers([[
        local pool, inner
        pool = peerpool.new { peers = { a.addr, b.addr }, policy = {
          select_peer = function()
            if not inner then
              inner = true
              pcall(pool.acquire, pool, nil, {}, function(_, c) if c then c:release() end end)
              while true do end
            end
            return 1
          end } }
        peerpool.run(function()
          local conn = pool:acquire()
          if conn then conn:release() end
        end)
        print("errors", pool:stats().hooks.select_peer.errors)
        pool:close()
      ]], 3)
      assert.equal(0, status, "exit status " .. tostring(status) ..
        " (137: killed after 3 s, the hook ran unbounded)\n" .. err)
      assert.matches("survived", out, 1, true)
    end)
  end)

  describe("burning", function()
    it("a peer whose backoff answers false is burned; acquires for it answer burned",
      test(function(env)
        local pool, srv = env:static_pool("refused", { retries = 5 })
        assert(pool:load_policy {
          backoff = function(attempt) return attempt < 2 and 1 or false end })
        local states = {}
        pool:on("state", function(_, _, to) states[#states + 1] = to end)
        local why = srv.addr .. " is burned: its backoff policy gave up; it is not dialled " ..
          "unless re-added (last ECONNREFUSED)"
        assert.same({ n = 3, nil, "burned", why }, pack(pool:acquire(srv.addr)))
        assert.equal("burned", pool:peer(srv.addr).state)
        assert.equal(2, pool:peer(srv.addr).attempts)
        assert.same({ n = 3, nil, "burned", why }, pack(pool:acquire(srv.addr)))
        assert.equal("no_peer", select(2, pool:acquire()))
        wait_until(function() return states[#states] == "burned" end, 1000, "the burned event")
        assert.equal(1, pool:stats().peers_by_state.burned)
      end))

    it("re-adding a burned address brings it back", test(function(env)
      local srv = env:line()
      local pool = env:pool { peers = { "127.0.0.1:1" }, retries = 0 }
      assert(pool:load_policy { backoff = function() return false end })
      assert.equal("burned", select(2, pool:acquire("127.0.0.1:1")))
      -- the address comes back (here: something listens there now, as a peer moved)
      pool:add_peer(srv.addr)
      assert.equal("127.0.0.1:1", pool:add_peer("127.0.0.1:1"))
      assert.equal("known", pool:peer("127.0.0.1:1").state)
      assert.equal(0, pool:peer("127.0.0.1:1").failures)
    end))

    it("a burned peer's conns are not lent again", test(function(env)
      local pool, srv = env:static_pool("node", { retries = 0, max_per_peer = 2 })
      local held = assert(pool:acquire(srv.addr))
      -- a second dial fails its handshake and the backoff burns the peer
      assert(pool:load_policy { handshake = function() return false end,
        backoff = function() return false end })
      assert.equal("burned", select(2, pool:acquire(srv.addr)))
      held:release()
      assert.equal("burned", select(2, pool:acquire(srv.addr)))
      assert.equal(0, pool:stats().conns)
    end))
  end)

  describe("ejection", function()
    it("consecutive failures eject a peer for a cool-down; acquires for it fail fast with why",
      test(function(env)
        local srv, other = env:node(), env:node() -- (a pool's only peer is never ejected)
        -- a long cool-down: the checks below must not outlast it on a loaded machine
        local pool = env:pool { peers = { srv.addr, other.addr }, eject_after = 2,
          eject_time = 1000, eject_max = 5000 }
        local spare = assert(pool:acquire(srv.addr))
        for _ = 1, 2 do
          local conn = assert(pool:acquire(srv.addr))
          conn:close("broken") -- the verdict: a failure in use
        end
        spare:release() -- back while its peer cools down: closed
        local view = pool:peer(srv.addr)
        assert.equal(1, view.ejections)
        assert.equal("ejected", view.state)
        assert.is_true(view.retry_in_ms > 500 and view.retry_in_ms <= 1000, view.retry_in_ms)
        local s = pool:stats()
        assert.equal(1, s.ejections)
        assert.equal(1, s.closed.ejected)
        assert.equal(0, s.conns)
        -- an acquire naming it answers at once, with the cause
        local t0 = uv.hrtime()
        local got = pack(pool:acquire(srv.addr))
        assert.same({ nil, "ejected" }, { got[1], got[2] })
        assert.matches("ejected", got[3], 1, true)
        assert.is_true((uv.hrtime() - t0) / 1e6 < 500, "answered after a wait")
        -- after the cool-down the peer serves again
        wait_until(function() return (pool:peer(srv.addr).retry_in_ms or 0) == 0 end, 3000,
          "the cool-down to end")
        local conn = assert(pool:acquire(srv.addr))
        conn:release()
        assert.equal("ready", pool:peer(srv.addr).state)
      end))

    it("doubles the cool-down at each ejection, up to eject_max", test(function(env)
      local srv, other = env:node(), env:node()
      -- cool-downs of 200, 400, 600 ms: each read below has 200 ms to spare on a loaded machine
      local pool = env:pool { peers = { srv.addr, other.addr }, eject_after = 1,
        eject_time = 200, eject_max = 600 }
      local retries = {}
      for i = 1, 3 do
        local conn
        wait_until(function()
          conn = pool:acquire(srv.addr)
          return conn
        end, 2000, "the cool-down to end")
        conn:close("broken")
        retries[i] = pool:peer(srv.addr).retry_in_ms
      end
      assert.is_true(retries[1] > 0 and retries[1] <= 200, tostring(retries[1]))
      assert.is_true(retries[2] > 200 and retries[2] <= 400, tostring(retries[2]))
      assert.is_true(retries[3] > 400 and retries[3] <= 600, tostring(retries[3]))
      assert.equal(3, pool:peer(srv.addr).ejections)
    end))

    it("an ejected peer is passed over by acquires for any peer while others serve",
      test(function(env)
        local bad, good = env:node(), env:node()
        local pool = env:pool { peers = { bad.addr, good.addr }, eject_after = 1,
          eject_time = 5000 }
        local conn = assert(pool:acquire(bad.addr))
        conn:close("broken")
        for _ = 1, 4 do
          conn = assert(pool:acquire())
          assert.equal(good.addr, conn.peer)
          conn:release()
        end
        assert.equal(1, bad.accepted)
      end))
  end)

  describe("freshness (max_address_age)", function()
    it("does not dial an address older than max_address_age: acquires answer no_peer",
      test(function(env)
        local srv = env:line()
        local pool = env:pool { max_address_age = 60000 }
        local old = os.time() * 1000 - 120000
        pool:add_peer(srv.addr, old)
        assert.equal(old, pool:peer(srv.addr).last_seen)
        assert.equal("no_peer", select(2, pool:acquire(srv.addr)))
        assert.equal("no_peer", select(2, pool:acquire()))
        assert.equal(0, srv.accepted)
        -- seen again: fresh, and dialled
        pool:add_peer(srv.addr)
        local conn = assert(pool:acquire())
        conn:release()
        assert.equal(1, srv.accepted)
      end))

    it("target_peers maintenance skips stale addresses", test(function(env)
      local stale, fresh = env:line(), env:line()
      local pool = env:pool { max_address_age = 60000, target_peers = 2,
        maintenance_interval = 10 }
      pool:add_peer(stale.addr, os.time() * 1000 - 120000)
      pool:add_peer(fresh.addr)
      wait_until(function() return pool:peer(fresh.addr).state == "ready" end, 2000, "the dial")
      sleep(50)
      assert.equal(0, stale.accepted)
      assert.equal("known", pool:peer(stale.addr).state)
    end))
  end)

  describe("target_peers", function()
    it("keeps N peers ready, asking the seed hook for addresses when it runs out",
      test(function(env)
        local srvs = env:many(4)
        local pool = env:pool { target_peers = 3, maintenance_interval = 10, seed_interval = 20 }
        local calls = {}
        local next_srv = 1
        -- (a fixed backoff: the default's full jitter may draw ~0 ms, and the lost peer would
        -- be redialled, "connecting", when the end checks it has failed)
        assert(pool:load_policy { backoff = function() return 5000 end, seed = function(ctx)
          calls[#calls + 1] = ctx.wanted
          -- one address per call: the maintenance tick must come back for more
          if srvs[next_srv] then ctx:add(srvs[next_srv].addr) end
          next_srv = next_srv + 1
        end })
        wait_until(function() return pool:stats().peers_by_state.ready == 3 end, 3000,
          "3 ready peers")
        assert.same({ 3, 2, 1 }, { calls[1], calls[2], calls[3] })
        sleep(60)
        assert.equal(3, #calls) -- satisfied: no more seeding
        assert.equal(3, pool:stats().conns)
        -- a peer lost for good (its conn dropped, its listener gone) is replaced
        srvs[1]:close()
        wait_until(function()
          return pool:stats().peers_by_state.ready == 3 and srvs[4].accepted == 1
        end, 3000, "a replacement peer")
        assert.equal("failed", pool:peer(srvs[1].addr).state)
      end))
  end)
end)
