# The README's two commands: `make run` and `make test`. Both install what is missing
# (Debian packages), configure, build and run.
BUILD    ?= build
SAN_BUILD ?= build-sanitize
FUZZ_BUILD ?= build-fuzz
JOBS     ?= $(shell nproc 2>/dev/null || echo 2)
ARGS     ?=
# make fuzz: seeds (a count or a range), seconds per seed; FUZZ_SEED=n replays one seed
SEEDS    ?= 1-40
SECONDS  ?= 20
# WERROR=ON: compiler warnings fail the build (CI sets it)
WERROR   ?= OFF

.PHONY: all deps build run test test-sanitize fuzz fuzz-sanitize fuzz-c bench lint clean

all: build

deps:
	@sh tools/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPP_WERROR=$(WERROR) > /dev/null
	cmake --build $(BUILD) -j $(JOBS)

run: build
	sh tools/run-demo.sh $(BUILD) $(ARGS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-sanitize: deps
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPP_SANITIZE=ON -DPP_WERROR=$(WERROR)
	cmake --build $(SAN_BUILD) -j $(JOBS)
	cd $(SAN_BUILD) && ctest --output-on-failure -j $(JOBS)

# The API fuzzer (spec/fuzz/api_fuzz.lua) for longer than ctest's fixed seeds:
#   make fuzz SEEDS=1-200 SECONDS=30     make fuzz FUZZ_SEED=17     make fuzz-sanitize
fuzz: build
	sh spec/fuzz/campaign.sh $(BUILD) $(SEEDS) $(SECONDS) $(JOBS)

fuzz-sanitize: deps
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPP_SANITIZE=ON -DPP_WERROR=$(WERROR)
	cmake --build $(SAN_BUILD) -j $(JOBS)
	sh spec/fuzz/campaign.sh $(SAN_BUILD) $(SEEDS) $(SECONDS) $(JOBS)

# The libFuzzer targets of the parsers of untrusted input (fuzz/: addresses, the address book,
# the REPL socket's line protocol), built with clang, ASan and UBSan in their own dir and run
# briefly from their seed corpora (ctest label libfuzzer). Needs clang and libclang-rt-14-dev
# (not installed by deps).
fuzz-c: deps
	@why=$$(sh tools/have-libfuzzer.sh) || { echo "fuzz-c: $$why" >&2; exit 1; }
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPP_BUILD_LUA=OFF \
	  -DPP_BUILD_TESTS=OFF -DPP_BUILD_BENCH=OFF
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_addr fuzz_book fuzz_repl_frames \
	  fuzz_attach_frames
	cd $(FUZZ_BUILD) && ctest --output-on-failure --no-tests=error -L libfuzzer -j $(JOBS)

bench: build
	sh bench/run.sh $(BUILD)

# make lint: formatting is mechanical (.clang-format, clang-format 14) and Lua is linted
# (.luacheckrc). Fails on any file clang-format would change and on any luacheck warning.
# LINT_C / LINT_LUA narrow it to some files: make lint LINT_C=engine/src/conn.c LINT_LUA=
LINT_C   ?= $(shell git ls-files '*.c' '*.h')
LINT_LUA ?= .
lint: deps
	@command -v clang-format >/dev/null || { echo "lint: needs clang-format (clang-format-14)" >&2; exit 1; }
	@command -v luacheck >/dev/null || { echo "lint: needs luacheck (lua-check)" >&2; exit 1; }
	$(if $(strip $(LINT_C)),clang-format --dry-run --Werror $(LINT_C))
	$(if $(strip $(LINT_LUA)),luacheck -q $(LINT_LUA))

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(FUZZ_BUILD)
