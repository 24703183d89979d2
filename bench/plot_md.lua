-- Plot a table of docs/bench.md with gnuplot: the first markdown table after a heading.
--   lua5.4 bench/plot_md.lua FILE HEADING OUT.png bars  LABEL_COL VALUE_COL YLABEL TITLE
--   lua5.4 bench/plot_md.lua FILE HEADING OUT.png lines SERIES_COLS X_COL Y_COL YLABEL TITLE
-- bars: one bar per row (LABEL_COL names it). lines: one line per distinct value of the
-- SERIES_COLS (e.g. "1,2"), X_COL on a log scale. Columns count from 1; cells are read as
-- numbers from their first number. Prints the PNG's path; exits non-zero without gnuplot.
local file, heading, out, kind = arg[1], arg[2], arg[3], arg[4]
assert(file and heading and out and (kind == "bars" or kind == "lines"),
  "usage: plot_md.lua FILE HEADING OUT.png bars|lines ...")

local function read_table()
  local rows, in_section, started = {}, false, false
  for line in io.lines(file) do
    if line:match("^#+ ") then
      if started then break end
      in_section = line:match("^#+ (.*)$") == heading
    elseif in_section and line:match("^|") then
      started = true
      if not line:match("^|%s*%-") then
        local cells = {}
        for cell in line:gmatch("|([^|]*)") do cells[#cells + 1] = cell:match("^%s*(.-)%s*$") end
        if cells[#cells] == "" then cells[#cells] = nil end
        rows[#rows + 1] = cells
      end
    elseif started then
      break
    end
  end
  assert(#rows > 1, file .. ": no table under the heading '" .. heading .. "'")
  return table.remove(rows, 1), rows
end

local function number(cell) return tonumber((cell or ""):match("[%d.]+")) end
local function quote(s) return '"' .. tostring(s):gsub('"', "'") .. '"' end

local header, rows = read_table()
local data, script = {}, {
  "set terminal pngcairo noenhanced size 1000,560 font ',11'",
  "set output " .. quote(out),
  "set grid ytics",
  "set key outside right top",
}
if kind == "bars" then
  local label_col, value_col = tonumber(arg[5]), tonumber(arg[6])
  local ylabel, title = arg[7], arg[8]
  for _, r in ipairs(rows) do
    data[#data + 1] = quote(r[label_col]) .. " " .. (number(r[value_col]) or 0)
  end
  script[#script + 1] = "set title " .. quote(title)
  script[#script + 1] = "set ylabel " .. quote(ylabel)
  script[#script + 1] = "set style fill solid 0.6 border -1"
  script[#script + 1] = "set boxwidth 0.6"
  script[#script + 1] = "set yrange [0:*]"
  script[#script + 1] = "set xtics rotate by -15 left"
  script[#script + 1] = "set rmargin 24"
  script[#script + 1] = "unset key"
  script[#script + 1] = "plot '-' using 0:2:xtic(1) with boxes lc rgb '#4477aa', " ..
    "'-' using 0:2:2 with labels offset 0,0.8"
  local block = table.concat(data, "\n") .. "\ne\n"
  script[#script + 1] = block .. block
else
  local series_cols, x_col, y_col = {}, tonumber(arg[6]), tonumber(arg[7])
  for c in arg[5]:gmatch("%d+") do series_cols[#series_cols + 1] = tonumber(c) end
  local ylabel, title = arg[8], arg[9]
  local order, series = {}, {}
  for _, r in ipairs(rows) do
    local parts = {}
    for _, c in ipairs(series_cols) do parts[#parts + 1] = r[c] end
    local name = table.concat(parts, ", ")
    if not series[name] then
      series[name] = {}
      order[#order + 1] = name
    end
    local x, y = number(r[x_col]), number(r[y_col])
    if x and y then table.insert(series[name], x .. " " .. y) end
  end
  script[#script + 1] = "set title " .. quote(title)
  script[#script + 1] = "set xlabel " .. quote(header[x_col])
  script[#script + 1] = "set ylabel " .. quote(ylabel)
  script[#script + 1] = "set logscale x"
  script[#script + 1] = "set yrange [0:*]"
  local plots, blocks = {}, {}
  for _, name in ipairs(order) do
    plots[#plots + 1] = "'-' using 1:2 with linespoints lw 2 title " .. quote(name)
    blocks[#blocks + 1] = table.concat(series[name], "\n") .. "\ne"
  end
  script[#script + 1] = "plot " .. table.concat(plots, ", ")
  script[#script + 1] = table.concat(blocks, "\n")
end

local gp = io.popen("gnuplot", "w")
if not gp then error("gnuplot is not installed (make deps installs gnuplot-nox)") end
gp:write(table.concat(script, "\n"), "\n")
local ok = gp:close()
if not ok then os.exit(1) end
print(out)
