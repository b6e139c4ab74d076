// Package wsconn turns a gorilla/websocket connection into a net.Conn carrying a byte stream
// the way Piko does (PROTOCOL.md section 2): every Write is one binary message, and Read
// concatenates message payloads, so a reader never sees message boundaries. A text message
// is a protocol error: the connection is closed with 1003.
package wsconn

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrTextMessage is returned by Read when the peer sent a text message.
var ErrTextMessage = errors.New("wsconn: text message on a binary stream")

// closeWait bounds how long Close waits for the peer's close frame.
const closeWait = 2 * time.Second

// Conn is a net.Conn over a websocket.Conn. One goroutine may Read while others Write.
type Conn struct {
	ws        *websocket.Conn
	r         io.Reader // payload reader of the current message, nil between messages
	wmu       sync.Mutex
	closeSeen chan struct{}
	seenOnce  sync.Once
	closeOnce sync.Once
	closeErr  error
}

// New wraps ws. The caller must not use ws directly for data afterwards (control frames
// through WriteControl are fine).
func New(ws *websocket.Conn) *Conn {
	c := &Conn{ws: ws, closeSeen: make(chan struct{})}
	def := ws.CloseHandler()
	ws.SetCloseHandler(func(code int, text string) error {
		c.markClosed()
		return def(code, text)
	})
	return c
}

func (c *Conn) markClosed() {
	c.seenOnce.Do(func() { close(c.closeSeen) })
}

// WS returns the wrapped websocket connection.
func (c *Conn) WS() *websocket.Conn { return c.ws }

// Read reads the byte stream across message boundaries. A normal close by the peer reads
// as io.EOF.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			mt, r, err := c.ws.NextReader()
			if err != nil {
				c.markClosed()
				var ce *websocket.CloseError
				if errors.As(err, &ce) && (ce.Code == websocket.CloseNormalClosure ||
					ce.Code == websocket.CloseGoingAway ||
					ce.Code == websocket.CloseNoStatusReceived) {
					return 0, io.EOF
				}
				return 0, err
			}
			if mt != websocket.BinaryMessage {
				c.wmu.Lock()
				_ = c.ws.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseUnsupportedData, "text message"),
					time.Now().Add(time.Second))
				c.wmu.Unlock()
				return 0, ErrTextMessage
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Ping sends a WebSocket ping (control frames may interleave with a fragmented message).
func (c *Conn) Ping(data []byte) error {
	return c.ws.WriteControl(websocket.PingMessage, data, time.Now().Add(time.Second))
}

// Close sends a normal close frame, waits (bounded) for the peer's close frame so that no
// unread data turns the TCP close into a reset, then closes the socket. Idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.wmu.Lock()
		err := c.ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
			time.Now().Add(time.Second))
		c.wmu.Unlock()
		if err == nil {
			select {
			case <-c.closeSeen:
			case <-time.After(closeWait):
			}
		}
		c.closeErr = c.ws.Close()
	})
	return c.closeErr
}

func (c *Conn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.ws.UnderlyingConn().SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
