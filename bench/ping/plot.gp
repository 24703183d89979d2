# plot.gp — the PING benchmark's figure: client CPU time per request and requests/s per client
# kind, side by side. bench_ping.lua calls it as
#   gnuplot -e "datafile='...'; outfile='docs/bench-ping.png'; rb=10.7; plottitle='...'" plot.gp
# datafile columns: idx "label" cpu cpu_min cpu_max rps rps_min rps_max (medians and ranges);
# rb is redis-benchmark's CPU µs/request, for the target lines (1.05x and 1.2x of it).
set terminal pngcairo size 1400,600 font "DejaVu Sans,11" enhanced
set output outfile
set encoding utf8
set multiplot layout 1,2 title plottitle font ",13"

set style data histograms
set style fill solid 0.75 border -1
set boxwidth 0.6 absolute
set errorbars lc rgb "#222222"
set grid ytics lc rgb "#dddddd"
set xtics nomirror scale 0 font ",10"
set ytics nomirror
set border 3
set key top left box opaque
set offsets 0.5, 0.5, graph 0.1, 0
set bmargin 4.5
set xrange [-0.5:*]

# Left: CPU per request, with the range over runs and the two target lines.
set title "client CPU time per request (user + sys, µs; lower is better)"
set ylabel "µs of CPU per request"
set yrange [0:*]
plot datafile using 1:3:4:5:(0.6):xtic(2) with boxerrorbars lc rgb "#4e79a7" \
       title "median (bar: min – max over runs)", \
     '' using 1:5:(sprintf("%.2f", $3)) with labels offset 0,0.9 font ",10" notitle, \
     rb * 1.05 with lines dt 2 lw 2 lc rgb "#e15759" title "C API target: 1.05 × redis-benchmark", \
     rb * 1.2 with lines dt 4 lw 2 lc rgb "#f28e2b" title "Lua API target: 1.2 × redis-benchmark"

# Right: requests per second.
set key top right
set title "requests per second (higher is better; the servers share the 2 CPUs)"
set ylabel "requests/s"
set format y "%.0f"
plot datafile using 1:6:7:8:(0.6):xtic(2) with boxerrorbars lc rgb "#59a14f" \
       title "median (bar: min – max over runs)", \
     '' using 1:8:(sprintf("%.0f", $6)) with labels offset 0,0.9 font ",10" notitle
unset multiplot
