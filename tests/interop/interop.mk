# Interop test peers (included by GNUmakefile). tests/integration/test_interop.py pairs them:
#   $(SAN_BUILD)/interop/codec_peer   ours: proto/websocket + proto/yamux + proto/http1, poll()
#   $(BUILD)/interop/go-yamuxpeer     hashicorp/yamux + gorilla/websocket (Debian packages)
#   $(BUILD)/interop/go-agent         a stand-in for a stock Piko agent (tunnel tests)
#   tests/interop/node/peer.js        yamux-js + ws from npm (node_modules/ is not committed)
# Go builds in GOPATH mode, offline, against /usr/share/gocode (`make deps` installs it).

INTEROP_GO_SRCS := $(wildcard tests/interop/go/*/*.go)
INTEROP_GOPATH := $(abspath $(BUILD))/interop/gopath
INTEROP_GOENV := GO111MODULE=off GOPATH=$(INTEROP_GOPATH):/usr/share/gocode \
	GOCACHE=$(abspath $(BUILD))/interop/gocache GOPROXY=off GOFLAGS= CGO_ENABLED=0
INTEROP_CODEC_OBJS := $(patsubst %.c,$(SAN_BUILD)/obj/%.o,proto/websocket.c proto/yamux.c \
	proto/http1.c)

INTEROP_TARGETS += $(SAN_BUILD)/interop/codec_peer $(BUILD)/interop/go-yamuxpeer \
	$(BUILD)/interop/go-agent tests/interop/node/node_modules/.installed

$(SAN_BUILD)/interop/codec_peer: tests/interop/codec_peer.c $(INTEROP_CODEC_OBJS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_CFLAGS) -MMD -MP $(SAN_LDFLAGS) -o $@ \
		$(filter %.c %.o,$^) $(PKG_LIBS)

# The Go sources are linked into a GOPATH tree as package pikointerop/...
$(INTEROP_GOPATH)/src/pikointerop:
	@mkdir -p $(@D)
	ln -sfn $(abspath tests/interop/go) $@

$(BUILD)/interop/go-yamuxpeer: $(INTEROP_GO_SRCS) | $(INTEROP_GOPATH)/src/pikointerop
	cd $(INTEROP_GOPATH)/src/pikointerop && $(INTEROP_GOENV) go build -o $(abspath $@) \
		pikointerop/yamuxpeer

$(BUILD)/interop/go-agent: $(INTEROP_GO_SRCS) | $(INTEROP_GOPATH)/src/pikointerop
	cd $(INTEROP_GOPATH)/src/pikointerop && $(INTEROP_GOENV) go build -o $(abspath $@) \
		pikointerop/agent

# npm ci only when node_modules is missing or the lock file changed.
tests/interop/node/node_modules/.installed: tests/interop/node/package.json \
		tests/interop/node/package-lock.json
	cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@


# go-pikoserver: a stand-in for a stock Piko server's upstream port (token check answering
# 401 JSON, forced statuses, streams opened towards the agent); used by test_piko.py.
INTEROP_TARGETS += $(BUILD)/interop/go-pikoserver

$(BUILD)/interop/go-pikoserver: $(INTEROP_GO_SRCS) | $(INTEROP_GOPATH)/src/pikointerop
	cd $(INTEROP_GOPATH)/src/pikointerop && $(INTEROP_GOENV) go build -o $(abspath $@) \
		pikointerop/pikoserver

# Last, so it sees every target appended above.
.PHONY: interop
interop: $(INTEROP_TARGETS)
