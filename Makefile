# syscont: `make demo` runs the main job end to end, `make test` runs every test.
# Both install the Debian packages they need (as root) first.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build release test lint unit demo bench deb fuzz clean check-programs

all: build

deps:
	./packaging/deps.sh

build: deps
	$(CARGO) build --all-targets

release: deps
	$(CARGO) build --release

lint: deps
	./packaging/check-layers.py
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints,fuzzing -- -D warnings

# Unit tests, then the integration tests (real registry, real skopeo, real systemd and
# runc in a private namespace). Tests that need root fail loudly without it.
# Then each fuzz target for a short bounded time (FUZZ_SECONDS).
FUZZ_SECONDS ?= 15
test: deps lint check-programs
	$(CARGO) test --all-targets --features failpoints -- --test-threads=2
	./fuzz/run.sh $(FUZZ_SECONDS)

# Every program the tests, the demo, the benchmark and syscont run comes from a package
# that deps.sh (or the benchmark's own list) installs.
check-programs: deps
	./packaging/check-programs.py

# The fuzz targets for longer: make fuzz FUZZ_SECONDS=600
fuzz: deps
	./fuzz/run.sh $(FUZZ_SECONDS)

demo: release
	./demo/demo.sh

# target/debian/syscont_VERSION_ARCH.deb: the release binary, man pages, completions, units.
deb: deps
	CARGO="$(CARGO)" ./packaging/deb/build.sh target/debian

bench: release
	./bench/run.sh

clean:
	$(CARGO) clean
