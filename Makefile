# memq: top-level build.  `make` builds everything, `make run` starts the
# demo cluster, `make test` builds and runs every test, `make deb` builds
# the Debian packages into build/deb/.

CC       ?= cc
CLANG    ?= clang
PYTHON   ?= /usr/bin/python3
OPT      ?= -O2
CFLAGS   ?= $(OPT) -g
WARN     := -Wall -Wextra -Wshadow -Wpointer-arith -Wno-unused-parameter \
            -Werror
CPPFLAGS := -D_GNU_SOURCE -Icommon
LDLIBS   := -lpthread

B        := build
COMMON   := $(wildcard common/*.c)
MEMQD    := $(wildcard memqd/*.c)
BENCH    := $(filter-out bench/fsync_designs.c bench/lease_structs.c,\
                        $(wildcard bench/*.c))
UNIT     := $(patsubst tests/unit/%.c,$(B)/unit/%,$(wildcard tests/unit/test_*.c))
FUZZ     := $(patsubst tests/fuzz/%.c,$(B)/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
HDRS     := $(wildcard common/*.h memqd/*.h)
SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer \
            -fno-sanitize-recover=undefined

# seconds each fuzz target runs in `make test`
FUZZ_SECONDS ?= 60

.PHONY: all memqd bench unit fuzz asan module deps run test test-unit \
        test-fuzz test-integration test-asan soak deb clean

all: memqd bench unit module $(B)/fsync-designs $(B)/lease-structs

memqd: $(B)/memqd
bench: $(B)/memq-bench
unit: $(UNIT)
fuzz: $(FUZZ)
asan: $(B)/asan/memqd

$(B)/memqd: $(MEMQD) $(COMMON) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(LDFLAGS) -o $@ $(MEMQD) $(COMMON) \
	    $(LDLIBS)

# MEMQD_DEBUG: a broken invariant that memqd survives (and logs) in the
# normal build stops the sanitizer build, so that the suites see it
$(B)/asan/memqd: $(MEMQD) $(COMMON) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -DMEMQD_DEBUG -O1 -g $(SAN) $(WARN) -o $@ $(MEMQD) \
	    $(COMMON) $(LDLIBS)

# the disk cost of one group commit under each storage design (docs/memqd.md)
$(B)/fsync-designs: bench/fsync_designs.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) -o $@ $<

# memqd's lease structures alone, under client-mode traffic (BENCHMARKS.md)
$(B)/lease-structs: bench/lease_structs.c memqd/lease.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Imemqd $(CFLAGS) $(WARN) -o $@ bench/lease_structs.c \
	    memqd/lease.c

$(B)/memq-bench: $(BENCH) $(COMMON) $(HDRS) $(wildcard bench/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WARN) $(LDFLAGS) -o $@ $(BENCH) $(COMMON) \
	    $(LDLIBS) -lm

# unit and fuzz tests link common/ and, when they test memqd code, the
# memqd sources named in "// links: memqd/x.c ..." lines at the top of the
# test file; tests/unit/standin.c, named there too, stands in for main.c
# (see standin.h)
LINKS    := sed -n '/^\/\/ links:/!q; s|^// links:||p'
STANDIN  := tests/unit/standin.c tests/unit/standin.h

$(B)/unit/%: tests/unit/%.c $(COMMON) $(MEMQD) $(HDRS) $(STANDIN)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Imemqd -O1 -g $(SAN) $(WARN) -o $@ $< $(COMMON) \
	    $$($(LINKS) $<) $(LDLIBS) -lcmocka

$(B)/fuzz/%: tests/fuzz/%.c $(COMMON) $(MEMQD) $(HDRS) $(STANDIN)
	@mkdir -p $(@D)
	$(CLANG) $(CPPFLAGS) -Imemqd -O1 -g -fsanitize=fuzzer,address,undefined \
	    -o $@ $< $(COMMON) $$($(LINKS) $<) $(LDLIBS)

module:
	@if [ -x ngx_memq/build.sh ]; then ngx_memq/build.sh $(B); fi

deps:
	@scripts/deps.sh

# the demo runs memqd and the module only: no sanitizer copy, no bench
run: deps memqd
	@echo "build: the gateway module (nginx-dev tree in $(B)/nginx-src)"
	@MEMQ_NO_ASAN=1 ngx_memq/build.sh $(B)
	@scripts/run-demo.sh

test: deps all fuzz asan
	$(PYTHON) scripts/check-style.py
	$(MAKE) test-unit test-fuzz test-asan test-integration

test-unit: $(UNIT)
	@scripts/run-unit.sh $(UNIT)

test-fuzz: $(FUZZ)
	@for f in $(FUZZ); do \
	    n=$$(basename $$f); mkdir -p $(B)/fuzz/corpus-$$n; \
	    echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	    $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        $(B)/fuzz/corpus-$$n tests/fuzz/corpus/$$n \
	        2>$(B)/fuzz/$$n.log || { tail -50 $(B)/fuzz/$$n.log; exit 1; }; \
	    grep -E 'stat::number_of_executed_units' $(B)/fuzz/$$n.log; \
	done

# The memqd suite and the gateway suite run as separate pytest processes:
# each has its own conftest.py, and test modules import helpers from them
# by name.
PYTEST   := $(PYTHON) -m pytest -q -p no:cacheprovider

# both suites against the sanitizer builds of memqd and of the module
test-asan: $(B)/asan/memqd module
	MEMQD=$(B)/asan/memqd MEMQ_SANITIZED=1 $(PYTEST) tests/integration \
	    --ignore=tests/integration/gateway
	@if [ -d tests/integration/gateway ]; then \
	    MEMQD=$(B)/asan/memqd MEMQ_SANITIZED=1 $(PYTEST) \
	        tests/integration/gateway; fi

test-integration: $(B)/memqd module
	MEMQD=$(B)/memqd $(PYTEST) tests/integration \
	    --ignore=tests/integration/gateway
	@if [ -d tests/integration/gateway ]; then \
	    MEMQD=$(B)/memqd $(PYTEST) tests/integration/gateway; fi

# longer crash loops than `make test` runs (MEMQ_SOAK_ROUNDS, default 2000)
soak: $(B)/memqd
	MEMQ_SOAK=1 MEMQD=$(B)/memqd $(PYTEST) tests/integration/test_crash.py \
	    -k soak

# memqd, libnginx-mod-http-memq and memq-tools (debian/), built with
# dpkg-buildpackage in a copy of the tree; does nothing when build/deb/ is
# newer than the sources
deb:
	@scripts/build-deb.sh $(B)/deb

clean:
	rm -rf $(B)
