# Benchmarks (included by GNUmakefile). Not tests: they measure and print, they assert nothing.
#
#   make bench-codec   yamux + WebSocket codec micro-benchmark (wall clock and callgrind)
#   make bench         end-to-end harness (bench/run.py): direct, pikod + agent, nginx one and
#                      two hops; prints the summary table; <= 10 minutes
#
# Tools (Debian): nginx-light wrk iperf3 gnuplot-nox valgrind (tools/deps.sh).
# Release flags (the same objects as build/pikod), so figures describe what ships.

BENCH_BUILD := $(BUILD)/bench
BENCH_CODEC_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,proto/websocket.c proto/yamux.c)
BENCH_TOOLS := $(BENCH_BUILD)/codec_bench $(BENCH_BUILD)/idle_tunnels $(BENCH_BUILD)/rate_client \
               $(BENCH_BUILD)/copy_relay

$(BENCH_BUILD)/codec_bench: bench/codec_bench.c $(BENCH_CODEC_OBJS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(HARDEN_CFLAGS) $(HARDEN_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BENCH_BUILD)/idle_tunnels: bench/idle_tunnels.c $(BENCH_CODEC_OBJS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(HARDEN_CFLAGS) $(HARDEN_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BENCH_BUILD)/rate_client: bench/rate_client.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(HARDEN_CFLAGS) $(HARDEN_LDFLAGS) -o $@ $^ -lm

$(BENCH_BUILD)/copy_relay: bench/copy_relay.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(HARDEN_CFLAGS) $(HARDEN_LDFLAGS) -o $@ $^ -lpthread

.PHONY: bench bench-codec bench-tools bench-deps
bench-tools: $(BENCH_TOOLS)

bench-deps:
	@./tools/deps.sh bench

bench-codec: bench-deps $(BENCH_BUILD)/codec_bench
	BENCH_BUILD=$(BENCH_BUILD) bench/codec.sh

bench: bench-deps all $(BENCH_TOOLS) $(BUILD)/interop/go-agent
	BUILD=$(BUILD) BENCH_BUILD=$(BENCH_BUILD) $(PYTHON) bench/run.py $(BENCH_ARGS)
