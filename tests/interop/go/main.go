// cesdk drives the CloudEvents Go SDK (github.com/cloudevents/sdk-go/v2) for the
// eventmesh interop tests (tests/interop/test_go_sdk.py).
//
//	cesdk send URL binary|structured     reads one event (JSON, below) on stdin, sends it
//	                                      with the SDK's HTTP client, prints {"status": N}
//	cesdk receive [REPLY]                 a webhook sink on 127.0.0.1:0: prints "PORT n",
//	                                      then one JSON line per event the SDK reads; with
//	                                      REPLY (a file holding one event) it answers every
//	                                      event with that event. Stops when stdin closes.
//
// An event is {"specversion", "id", "source", "type", "datacontenttype", "dataschema",
// "subject", "time", "extensions": {name: value}, "data_b64"}: absent or null keys are
// unset attributes; "data_b64" is the data bytes exactly, base64.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

type spec struct {
	SpecVersion     string                 `json:"specversion"`
	ID              string                 `json:"id"`
	Source          string                 `json:"source"`
	Type            string                 `json:"type"`
	DataContentType *string                `json:"datacontenttype"`
	DataSchema      *string                `json:"dataschema"`
	Subject         *string                `json:"subject"`
	Time            *string                `json:"time"`
	Extensions      map[string]interface{} `json:"extensions"`
	DataB64         *string                `json:"data_b64"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "cesdk: "+format+"\n", args...)
	os.Exit(2)
}

func build(raw []byte) event.Event {
	var s spec
	if err := json.Unmarshal(raw, &s); err != nil {
		fail("event JSON: %v", err)
	}
	e := cloudevents.NewEvent()
	if s.SpecVersion != "" {
		e.SetSpecVersion(s.SpecVersion)
	}
	e.SetID(s.ID)
	e.SetSource(s.Source)
	e.SetType(s.Type)
	if s.Subject != nil {
		e.SetSubject(*s.Subject)
	}
	if s.DataSchema != nil {
		e.SetDataSchema(*s.DataSchema)
	}
	if s.Time != nil {
		t, err := time.Parse(time.RFC3339Nano, *s.Time)
		if err != nil {
			fail("time: %v", err)
		}
		e.SetTime(t)
	}
	for name, value := range s.Extensions {
		if number, ok := value.(float64); ok { // JSON numbers: the spec's Integer
			value = int32(number)
		}
		e.SetExtension(name, value)
	}
	if s.DataB64 != nil {
		data, err := base64.StdEncoding.DecodeString(*s.DataB64)
		if err != nil {
			fail("data_b64: %v", err)
		}
		contentType := ""
		if s.DataContentType != nil {
			contentType = *s.DataContentType
		}
		if err := e.SetData(contentType, data); err != nil {
			fail("data: %v", err)
		}
	} else if s.DataContentType != nil {
		e.SetDataContentType(*s.DataContentType)
	}
	if err := e.Validate(); err != nil {
		fail("event: %v", err)
	}
	return e
}

// describe is what the SDK read: every attribute, each extension with its Go type, the
// data bytes.
func describe(e event.Event) map[string]interface{} {
	out := map[string]interface{}{
		"specversion": e.SpecVersion(),
		"id":          e.ID(),
		"source":      e.Source(),
		"type":        e.Type(),
	}
	ctx := e.Context
	if v := ctx.GetDataContentType(); v != "" {
		out["datacontenttype"] = v
	}
	if v := ctx.GetDataSchema(); v != "" {
		out["dataschema"] = v
	}
	if v := ctx.GetSubject(); v != "" {
		out["subject"] = v
	}
	if t := ctx.GetTime(); !t.IsZero() {
		out["time"] = t.UTC().Format(time.RFC3339Nano)
	}
	extensions := map[string]interface{}{}
	types := map[string]string{}
	names := make([]string, 0)
	for name := range e.Extensions() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := e.Extensions()[name]
		types[name] = fmt.Sprintf("%T", value)
		switch v := value.(type) {
		case fmt.Stringer:
			extensions[name] = v.String()
		default:
			extensions[name] = v
		}
	}
	out["extensions"] = extensions
	out["extension_types"] = types
	if data := e.Data(); data != nil {
		out["data_b64"] = base64.StdEncoding.EncodeToString(data)
	} else {
		out["data_b64"] = nil
	}
	return out
}

func send(url, mode string) {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("stdin: %v", err)
	}
	e := build(raw)
	client, err := cloudevents.NewClientHTTP()
	if err != nil {
		fail("client: %v", err)
	}
	ctx := cloudevents.ContextWithTarget(context.Background(), url)
	switch mode {
	case "binary":
		ctx = binding.WithForceBinary(ctx)
	case "structured":
		ctx = binding.WithForceStructured(ctx)
	default:
		fail("mode must be binary or structured, got %q", mode)
	}
	result := client.Send(ctx, e)
	var answer *cehttp.Result
	if cloudevents.ResultAs(result, &answer) {
		fmt.Printf("{\"status\": %d}\n", answer.StatusCode)
		return
	}
	if !protocol.IsACK(result) {
		fail("send: %v", result)
	}
	fmt.Println("{\"status\": 0}")
}

func receive(replyFile string) {
	var reply *event.Event
	if replyFile != "" {
		raw, err := os.ReadFile(replyFile)
		if err != nil {
			fail("reply: %v", err)
		}
		e := build(raw)
		reply = &e
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("listen: %v", err)
	}
	protocolHTTP, err := cloudevents.NewHTTP(cehttp.WithListener(listener))
	if err != nil {
		fail("http: %v", err)
	}
	client, err := cloudevents.NewClient(protocolHTTP)
	if err != nil {
		fail("client: %v", err)
	}
	out := bufio.NewWriter(os.Stdout)
	lines := make(chan []byte, 1000)
	go func() {
		for line := range lines {
			out.Write(line)
			out.WriteString("\n")
			out.Flush()
		}
	}()
	fmt.Fprintf(out, "PORT %d\n", listener.Addr().(*net.TCPAddr).Port)
	out.Flush()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // the test closes stdin to stop the sink
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	handler := func(ctx context.Context, e event.Event) (*event.Event, protocol.Result) {
		line, err := json.Marshal(describe(e))
		if err != nil {
			return nil, cehttp.NewResult(500, "describe: %v", err)
		}
		lines <- line
		if reply != nil {
			return reply, cehttp.NewResult(200, "")
		}
		return nil, cehttp.NewResult(202, "")
	}
	if err := client.StartReceiver(ctx, handler); err != nil {
		fail("receiver: %v", err)
	}
}

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "send" {
		send(os.Args[2], os.Args[3])
		return
	}
	if len(os.Args) >= 2 && os.Args[1] == "receive" {
		replyFile := ""
		if len(os.Args) >= 3 {
			replyFile = os.Args[2]
		}
		receive(replyFile)
		return
	}
	fail("usage: cesdk send URL binary|structured < event.json | cesdk receive [REPLY]")
}
