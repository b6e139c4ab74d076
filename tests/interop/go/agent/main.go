// go-agent: a stand-in for a stock Piko agent, built on hashicorp/yamux and
// gorilla/websocket, for tunnel tests against pikod.
//
//	go-agent --url http://127.0.0.1:PORT --endpoint ID --forward 127.0.0.1:PORT [--token T]
//
// It dials ws://HOST/piko/v1/upstream/ID (Authorization: Bearer T when given), runs a yamux
// CLIENT session over the WebSocket (every write one binary message, reads across message
// boundaries) with keepalive on (hashicorp's defaults: a ping every 30 s), accepts the
// server's streams and splices each to a new TCP connection to --forward, both directions,
// with half-close carried over (stream EOF -> CloseWrite on TCP, TCP EOF -> FIN).
//
// stdout: "registered" after every successful upgrade. On 401 it prints the server's body
// (Piko's JSON error) and exits 2. Any other failure or a lost session is retried with
// exponential backoff from 100 ms to 2 s. Errors are logged to stderr.
//
// Limitation of the packaged hashicorp/yamux (2019): once a stream is half-closed locally,
// reads on it end as soon as its buffer is empty, so data the server sends after the
// forwarded service closed its side may be cut short, as with the yamux of Piko's agent.
package main

import (
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"pikointerop/wsconn"
)

var (
	serverURL   = flag.String("url", "", "Piko server upstream URL (http:// or https://)")
	endpoint    = flag.String("endpoint", "", "endpoint id to register")
	forward     = flag.String("forward", "", "address streams are forwarded to")
	token       = flag.String("token", "", "bearer token")
	keepaliveMs = flag.Int("keepalive-ms", 0, "yamux keepalive interval (0: hashicorp's 30 s)")
)

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

func logf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-agent: "+format+"\n", a...)
}

func upstreamURL() (string, error) {
	u, err := url.Parse(*serverURL)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("unsupported scheme %q", u.Scheme)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/piko/v1/upstream/" + url.PathEscape(*endpoint)
	return u.String(), nil
}

// splice copies both ways between a stream and a TCP connection, carrying half-closes.
func splice(st net.Conn, tcp *net.TCPConn) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(tcp, st); err != nil {
			logf("stream -> %s: %v", *forward, err)
		}
		tcp.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		if _, err := io.Copy(st, tcp); err != nil {
			logf("%s -> stream: %v", *forward, err)
		}
		st.Close() // FIN
	}()
	wg.Wait()
	tcp.Close()
}

func handle(st net.Conn) {
	c, err := net.DialTimeout("tcp", *forward, 5*time.Second)
	if err != nil {
		logf("dial %s: %v", *forward, err)
		st.Close()
		return
	}
	splice(st, c.(*net.TCPConn))
}

// session runs one registration. It returns (fatal exit code, true) on a 401, or
// (0, registered) when the attempt or the session is over.
func session(target string) (int, bool) {
	h := http.Header{}
	if *token != "" {
		h.Set("Authorization", "Bearer "+*token)
	}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(target, h)
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			body, _ := ioutil.ReadAll(io.LimitReader(resp.Body, 4096))
			fmt.Println(strings.TrimSpace(string(body)))
			logf("unauthorized: %s", strings.TrimSpace(string(body)))
			return 2, true
		}
		if resp != nil {
			logf("dial %s: %v (status %d)", target, err, resp.StatusCode)
		} else {
			logf("dial %s: %v", target, err)
		}
		return 0, false
	}
	fmt.Println("registered")
	conn := wsconn.New(ws)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	if *keepaliveMs > 0 {
		cfg.KeepAliveInterval = time.Duration(*keepaliveMs) * time.Millisecond
	}
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		logf("yamux: %v", err)
		conn.Close()
		return 0, true
	}
	for {
		st, err := sess.Accept()
		if err != nil {
			logf("session ended: %v", err)
			break
		}
		go handle(st)
	}
	sess.Close()
	return 0, true
}

func main() {
	flag.Parse()
	if *serverURL == "" || *endpoint == "" || *forward == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr,
			"usage: go-agent --url URL --endpoint ID --forward HOST:PORT [--token T]")
		os.Exit(2)
	}
	target, err := upstreamURL()
	if err != nil {
		logf("bad --url: %v", err)
		os.Exit(2)
	}
	backoff := minBackoff
	for {
		code, registered := session(target)
		if code != 0 {
			os.Exit(code)
		}
		if registered {
			backoff = minBackoff
		}
		time.Sleep(backoff)
		backoff *= 2
		if backoff > maxBackoff {
			backoff = maxBackoff
		}
	}
}
