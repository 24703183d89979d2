-- Lint settings for the specs and their helpers (Lua 5.4; busted's globals in spec/).
std = "lua54"
max_line_length = 100
files["spec/"] = { std = "+busted" }
exclude_files = { "build*/", "build.luarocks/" }
-- The fuzzer and its reproducers quote long replay commands and traces.
files["spec/fuzz/"] = { std = "lua54", max_line_length = 130 }
