// go-pikoserver: a stand-in for a stock Piko server's upstream port, built on
// hashicorp/yamux and gorilla/websocket, for testing the piko agent against an independent
// implementation.
//
//	go-pikoserver --listen 127.0.0.1:0 [--token T] [--status CODE] [--open N]
//	              [--request-path /p | --stream-bytes N] [--timeout S]
//	              [--tls-cert F --tls-key F]
//
// It accepts GET /piko/v1/upstream/<endpoint> upgrades. With --token, the request must carry
// "Authorization: Bearer T" (or x-piko-authorization, which wins); otherwise it answers 401
// with Piko's JSON error ({"error":"missing authorization"} or {"error":"invalid token"})
// and no upgrade. With --status, every registration is answered with that status and
// {"error":"forced status CODE"}. After the upgrade it runs a yamux SERVER session over the
// WebSocket (every write one binary message) and opens --open streams, each carrying one
// "GET --request-path HTTP/1.1" with Connection: close; the answer is read until the
// agent's FIN. With --stream-bytes, a stream carries that many bytes instead (byte i is
// i % 251, for a TCP agent) while as many are read back, then FIN. With --ack-probe, the
// session allows one unacknowledged stream (AcceptBacklog 1): one request is sent, and a
// second OpenStream, which waits for the first stream's ACK, tells whether that ACK came
// before the answer.
//
// stdout, one line per event (the first line is the port):
//
//	refused <endpoint> status=<code>
//	registered <endpoint> auth=<bearer|none>
//	response <endpoint> status=<code> bytes=<n> body_sha256=<hex>
//	echoed <endpoint> bytes=<n> sha256=<hex>        (--stream-bytes)
//	ack <endpoint> before-answer|after-answer        (--ack-probe)
//	stream-error <endpoint> <error>
//	closed <endpoint>
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"pikointerop/wsconn"
)

var (
	listen      = flag.String("listen", "127.0.0.1:0", "listen address")
	token       = flag.String("token", "", "required bearer token (empty: no auth)")
	status      = flag.Int("status", 0, "answer every registration with this status")
	open        = flag.Int("open", 0, "streams to open per session")
	requestPath = flag.String("request-path", "/", "path of the request sent on each stream")
	streamBytes = flag.Int("stream-bytes", -1, "raw bytes sent on each stream instead of a request")
	ackProbe    = flag.Bool("ack-probe", false, "report whether a stream's ACK comes before its answer")
	timeout     = flag.Int("timeout", 120, "seconds before exiting (exit 3)")
	tlsCert     = flag.String("tls-cert", "", "serve TLS with this certificate (PEM)")
	tlsKey      = flag.String("tls-key", "", "private key for --tls-cert (PEM)")
	printMu     sync.Mutex
)

const prefix = "/piko/v1/upstream/"

func say(format string, a ...interface{}) {
	printMu.Lock()
	fmt.Printf(format+"\n", a...)
	printMu.Unlock()
}

func jsonError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, "{\"error\":%q}\n", msg)
}

// authorize applies Piko's header rule: x-piko-authorization wins over Authorization.
func authorize(r *http.Request) (string, int, string) {
	h := r.Header.Get("x-piko-authorization")
	if h == "" {
		h = r.Header.Get("Authorization")
	}
	if *token == "" {
		if h != "" {
			return "bearer", 0, ""
		}
		return "none", 0, ""
	}
	if h == "" {
		return "", http.StatusUnauthorized, "missing authorization"
	}
	if !strings.HasPrefix(h, "Bearer ") {
		return "", http.StatusUnauthorized, "unsupported auth type"
	}
	if strings.TrimPrefix(h, "Bearer ") != *token {
		return "", http.StatusUnauthorized, "invalid token"
	}
	return "bearer", 0, ""
}

// rawExchange sends n pattern bytes on st while reading as many back, then FIN. The FIN
// cannot go first: this hashicorp/yamux's Stream.Read returns io.EOF after a local Close
// whenever its buffer is momentarily empty, before the peer's FIN.
func rawExchange(st *yamux.Stream, ep string, n int) {
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i % 251)
	}
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		werr <- err
	}()
	st.SetReadDeadline(time.Now().Add(60 * time.Second))
	back := make([]byte, n)
	got, err := io.ReadFull(st, back)
	if err != nil {
		say("stream-error %s read after %d bytes: %v", ep, got, err)
		return
	}
	if err := <-werr; err != nil {
		say("stream-error %s write: %v", ep, err)
		return
	}
	sum := sha256.Sum256(back)
	say("echoed %s bytes=%d sha256=%s", ep, got, hex.EncodeToString(sum[:]))
}

// request is the HTTP request each stream carries.
func request(ep string) string {
	return fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s.example.com\r\nConnection: close\r\n"+
		"X-Piko-Forward: true\r\n\r\n", *requestPath, ep)
}

// probeAck sends a request on a first stream and opens a second, which this session lets
// through only once the first is ACKed; then reports whether the answer had come by then.
func probeAck(sess *yamux.Session, ep string) {
	first, err := sess.OpenStream()
	if err != nil {
		say("stream-error %s open: %v", ep, err)
		return
	}
	defer first.Close()
	req := request(ep)
	if _, err := first.Write([]byte(req)); err != nil {
		say("stream-error %s write: %v", ep, err)
		return
	}
	answered := make(chan struct{})
	go func() {
		first.SetReadDeadline(time.Now().Add(30 * time.Second))
		ioutil.ReadAll(first)
		close(answered)
	}()
	second, err := sess.OpenStream()
	if err != nil {
		say("stream-error %s open: %v", ep, err)
		return
	}
	select {
	case <-answered:
		say("ack %s after-answer", ep)
	default:
		say("ack %s before-answer", ep)
	}
	second.Close()
	<-answered
}

func exchange(sess *yamux.Session, ep string) {
	st, err := sess.OpenStream()
	if err != nil {
		say("stream-error %s open: %v", ep, err)
		return
	}
	defer st.Close()
	if *streamBytes >= 0 {
		rawExchange(st, ep, *streamBytes)
		return
	}
	req := request(ep)
	if _, err := st.Write([]byte(req)); err != nil {
		say("stream-error %s write: %v", ep, err)
		return
	}
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	raw, err := ioutil.ReadAll(st)
	if err != nil {
		say("stream-error %s read after %d bytes: %v", ep, len(raw), err)
		return
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
	if err != nil {
		say("stream-error %s parse: %v", ep, err)
		return
	}
	body, err := ioutil.ReadAll(resp.Body)
	if err != nil {
		say("stream-error %s body: %v", ep, err)
		return
	}
	sum := sha256.Sum256(body)
	say("response %s status=%d bytes=%d body_sha256=%s", ep, resp.StatusCode, len(body),
		hex.EncodeToString(sum[:]))
}

func handle(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, prefix) || len(r.URL.Path) == len(prefix) {
		jsonError(w, http.StatusNotFound, "not found")
		return
	}
	ep := r.URL.Path[len(prefix):]
	if *status != 0 {
		say("refused %s status=%d", ep, *status)
		jsonError(w, *status, fmt.Sprintf("forced status %d", *status))
		return
	}
	auth, code, msg := authorize(r)
	if code != 0 {
		say("refused %s status=%d", ep, code)
		jsonError(w, code, msg)
		return
	}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		say("stream-error %s upgrade: %v", ep, err)
		return
	}
	c := wsconn.New(ws)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	if *ackProbe {
		cfg.AcceptBacklog = 1
	}
	sess, err := yamux.Server(c, cfg)
	if err != nil {
		say("stream-error %s yamux: %v", ep, err)
		c.Close()
		return
	}
	say("registered %s auth=%s", ep, auth)
	if *ackProbe {
		probeAck(sess, ep)
	}
	for i := 0; i < *open; i++ {
		exchange(sess, ep)
	}
	<-sess.CloseChan()
	say("closed %s", ep)
	c.Close()
}

func main() {
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-pikoserver: %v\n", err)
		os.Exit(1)
	}
	say("%d", ln.Addr().(*net.TCPAddr).Port)
	time.AfterFunc(time.Duration(*timeout)*time.Second, func() {
		fmt.Fprintln(os.Stderr, "go-pikoserver: timed out")
		os.Exit(3)
	})
	srv := &http.Server{Handler: http.HandlerFunc(handle), ErrorLog: nil}
	if *tlsCert != "" {
		err = srv.ServeTLS(ln, *tlsCert, *tlsKey)
	} else {
		err = srv.Serve(ln)
	}
	if err != nil && err != io.EOF {
		fmt.Fprintf(os.Stderr, "go-pikoserver: %v\n", err)
		os.Exit(1)
	}
}
