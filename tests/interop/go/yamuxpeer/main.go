// go-yamuxpeer: the interop test peer built on independent implementations
// (hashicorp/yamux over gorilla/websocket). It takes the same modes and switches as
// tests/interop/codec_peer.c so that the tests can pair any two peers:
//
//	go-yamuxpeer server --listen 127.0.0.1:0 [switches]   first stdout line: the port
//	go-yamuxpeer client --url ws://127.0.0.1:PORT/path [switches]
//
// Switches: --echo, --open N, --bytes M, --conns K, --timeout S, --ws-ping-ms MS, --ping,
// --ping-ms MS (yamux keepalive interval), --window BYTES, and, client only, --send-text (send one text
// message instead of running yamux and report the close code the server answers with).
// Each connection ends with the same summary line as codec_peer's.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"pikointerop/wsconn"
)

var (
	echo      = flag.Bool("echo", false, "echo the peer's streams")
	open      = flag.Int("open", 0, "streams to open")
	nbytes    = flag.Int64("bytes", 1<<20, "bytes per opened stream")
	conns     = flag.Int("conns", 0, "server: exit after this many connections (0: never)")
	timeout   = flag.Int("timeout", 60, "seconds before giving up (exit 3)")
	wsPingMs  = flag.Int("ws-ping-ms", 0, "send a WebSocket ping every MS ms")
	ping      = flag.Bool("ping", false, "send a yamux ping at session start")
	pingMs    = flag.Int("ping-ms", 0, "yamux keepalive interval in ms (0: hashicorp's default)")
	listen    = flag.String("listen", "", "server: listen address")
	url       = flag.String("url", "", "client: ws:// URL")
	sendText  = flag.Bool("send-text", false, "client: send a text message, report the close")
	window    = flag.Int("window", 256*1024, "receive window per stream (MaxStreamWindowSize)")
	msgSize   = flag.Int("msg-size", 0, "accepted for flag compatibility; ignored")
	frag      = flag.Bool("frag", false, "accepted for flag compatibility; ignored")
	printLock sync.Mutex
)

const chunk = 32 * 1024

// pattern is the per-stream byte pattern shared by every peer.
func pattern(k int, i int64) byte {
	return byte(i*7 + int64(k)*13 + (i >> 10))
}

func fill(buf []byte, k int, off int64) {
	for j := range buf {
		buf[j] = pattern(k, off+int64(j))
	}
}

type stats struct {
	opened, verified, failed, echoedStreams, pings int64
	verifiedBytes, echoedBytes                     int64
	errMu                                          sync.Mutex
	err                                            string
}

func (s *stats) fail(format string, a ...interface{}) {
	msg := fmt.Sprintf(format, a...)
	fmt.Fprintf(os.Stderr, "go-yamuxpeer: %s\n", msg)
	s.errMu.Lock()
	if s.err == "" {
		s.err = msg
	}
	s.errMu.Unlock()
}

func (s *stats) ok() bool {
	return s.err == "" && s.verified == int64(*open) && s.failed == 0
}

func (s *stats) print() {
	e := s.err
	if e == "" {
		e = "none"
	}
	printLock.Lock()
	fmt.Printf("summary opened=%d verified=%d failed=%d verified_bytes=%d echoed_streams=%d "+
		"echoed_bytes=%d pings=%d error=%s\n", atomic.LoadInt64(&s.opened),
		atomic.LoadInt64(&s.verified), atomic.LoadInt64(&s.failed),
		atomic.LoadInt64(&s.verifiedBytes), atomic.LoadInt64(&s.echoedStreams),
		atomic.LoadInt64(&s.echoedBytes), atomic.LoadInt64(&s.pings), e)
	printLock.Unlock()
}

func echoStream(st *yamux.Stream, s *stats) {
	buf := make([]byte, chunk)
	var n64 int64
	for {
		n, err := st.Read(buf)
		if n > 0 {
			if _, werr := st.Write(buf[:n]); werr != nil {
				s.fail("echo: stream %d: write: %v", st.StreamID(), werr)
				st.Close()
				return
			}
			n64 += int64(n)
			atomic.AddInt64(&s.echoedBytes, int64(n))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			s.fail("echo: stream %d: read: %v", st.StreamID(), err)
			st.Close()
			return
		}
	}
	st.Close()
	atomic.AddInt64(&s.echoedStreams, 1)
}

// openStream sends the pattern and verifies the echo. This yamux version cannot read after
// a local Close (reads return EOF once the buffer is empty), so the FIN goes out only once
// the whole echo has been read; the peer's FIN is then seen as the stream leaving the
// session (NumStreams).
func openStream(sess *yamux.Session, k int, s *stats) {
	st, err := sess.OpenStream()
	if err != nil {
		atomic.AddInt64(&s.failed, 1)
		s.fail("open: %v", err)
		return
	}
	atomic.AddInt64(&s.opened, 1)
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, chunk)
		for off := int64(0); off < *nbytes; {
			n := int64(len(buf))
			if *nbytes-off < n {
				n = *nbytes - off
			}
			fill(buf[:n], k, off)
			if _, err := st.Write(buf[:n]); err != nil {
				werr <- err
				return
			}
			off += n
		}
		werr <- nil
	}()
	buf := make([]byte, chunk)
	want := make([]byte, chunk)
	var got int64
	for got < *nbytes {
		n, err := st.Read(buf)
		if n > 0 {
			fill(want[:n], k, got)
			if !bytes.Equal(buf[:n], want[:n]) {
				atomic.AddInt64(&s.failed, 1)
				s.fail("open: stream %d: echo differs near offset %d", st.StreamID(), got)
				st.Close()
				return
			}
			got += int64(n)
		}
		if err != nil {
			atomic.AddInt64(&s.failed, 1)
			s.fail("open: stream %d: read after %d bytes: %v", st.StreamID(), got, err)
			st.Close()
			return
		}
	}
	if err := <-werr; err != nil {
		atomic.AddInt64(&s.failed, 1)
		s.fail("open: stream %d: write: %v", st.StreamID(), err)
		st.Close()
		return
	}
	st.Close()
	atomic.AddInt64(&s.verified, 1)
	atomic.AddInt64(&s.verifiedBytes, got)
}

// runSession runs one yamux session over c and returns its stats once it is over.
func runSession(c *wsconn.Conn, server bool) *stats {
	s := &stats{}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	cfg.MaxStreamWindowSize = uint32(*window)
	if *pingMs > 0 {
		cfg.KeepAliveInterval = time.Duration(*pingMs) * time.Millisecond
	}
	var sess *yamux.Session
	var err error
	if server {
		sess, err = yamux.Server(c, cfg)
	} else {
		sess, err = yamux.Client(c, cfg)
	}
	if err != nil {
		s.fail("yamux: %v", err)
		c.Close()
		return s
	}
	stopPings := make(chan struct{})
	if *wsPingMs > 0 {
		go func() {
			t := time.NewTicker(time.Duration(*wsPingMs) * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					c.Ping([]byte("go-yamuxpeer"))
				case <-stopPings:
					return
				}
			}
		}()
	}
	defer close(stopPings)

	var echoes sync.WaitGroup
	go func() {
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			if !*echo {
				st.Close()
				continue
			}
			echoes.Add(1)
			go func() {
				defer echoes.Done()
				echoStream(st, s)
			}()
		}
	}()

	if *ping {
		if _, err := sess.Ping(); err != nil {
			s.fail("yamux: ping: %v", err)
		} else {
			atomic.AddInt64(&s.pings, 1)
		}
	}
	if *open > 0 {
		var wg sync.WaitGroup
		for k := 0; k < *open; k++ {
			wg.Add(1)
			go func(k int) {
				defer wg.Done()
				openStream(sess, k, s)
			}(k)
		}
		wg.Wait()
		// Every stream is fully closed once the peer's FINs arrived.
		for sess.NumStreams() > 0 && !sess.IsClosed() {
			time.Sleep(5 * time.Millisecond)
		}
		if sess.NumStreams() > 0 {
			s.fail("open: session ended with %d streams not closed by the peer",
				sess.NumStreams())
		}
		sess.GoAway()
		sess.Close()
	} else {
		<-sess.CloseChan()
	}
	echoes.Wait()
	c.Close()
	return s
}

func runServer() int {
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-yamuxpeer: %v\n", err)
		return 1
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	done := make(chan bool, 64)
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			fmt.Fprintf(os.Stderr, "go-yamuxpeer: upgrade: %v\n", err)
			return
		}
		s := runSession(wsconn.New(ws), true)
		s.print()
		done <- s.ok()
	})
	go http.Serve(ln, h)
	bad := 0
	for n := 0; *conns == 0 || n < *conns; n++ {
		if !<-done {
			bad++
		}
	}
	if bad > 0 {
		return 1
	}
	return 0
}

func runClient() int {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(*url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		fmt.Fprintf(os.Stderr, "go-yamuxpeer: dial %s: %v (status %d)\n", *url, err, status)
		return 1
	}
	if *sendText {
		return textProbe(ws)
	}
	s := runSession(wsconn.New(ws), false)
	s.print()
	if !s.ok() {
		return 1
	}
	return 0
}

// textProbe sends a text message where Piko expects binary ones and reports the server's
// answer: "closed code=N" and exit 0 if it closed with 1002 or 1003.
func textProbe(ws *websocket.Conn) int {
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte("not yamux")); err != nil {
		fmt.Fprintf(os.Stderr, "go-yamuxpeer: write text: %v\n", err)
		return 1
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			fmt.Printf("closed code=%d\n", ce.Code)
			if ce.Code == websocket.CloseProtocolError || ce.Code == websocket.CloseUnsupportedData {
				return 0
			}
			return 1
		}
		fmt.Printf("closed code=none error=%v\n", err)
		return 1
	}
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "server" && os.Args[1] != "client") {
		fmt.Fprintln(os.Stderr, "usage: go-yamuxpeer server|client [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	// Accept "--flag" spellings like the C peer (the flag package takes both).
	flag.CommandLine.Parse(os.Args[2:])
	if flag.NArg() > 0 || (mode == "server" && *listen == "") || (mode == "client" && *url == "") {
		fmt.Fprintln(os.Stderr, "go-yamuxpeer: bad arguments:", strings.Join(os.Args[1:], " "))
		os.Exit(2)
	}
	_ = msgSize
	_ = frag
	time.AfterFunc(time.Duration(*timeout)*time.Second, func() {
		fmt.Fprintln(os.Stderr, "go-yamuxpeer: timed out")
		os.Exit(3)
	})
	if mode == "server" {
		os.Exit(runServer())
	}
	os.Exit(runClient())
}
