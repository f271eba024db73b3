// Helpers for warren handlers in Go: JSON in and out in one call, typed
// header access, and the outcomes. Plain Go over the generated bindings;
// copy it into any handler (package export_wit_world).
//
//	var obj map[string]any
//	err := JSONBody(msg, &obj)                       // not JSON: err says why
//	tenant, ok := HeaderString(msg, "tenant")        // !ok if absent or not text
//	err = PublishJSON("", routingKey, obj, msg.CorrelationId)
//	n, err := KvIncrement("count:acme", 1)          // committed on ack only
//	return Ack() | Retry("db busy", 5000) | Reject("bad input")
package export_wit_world

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	host "wit_component/warren_handler_host"
	kv "wit_component/warren_handler_kv"
	types "wit_component/warren_handler_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// JSONBody parses the body as JSON into `into`. Strict where encoding/json
// is lenient: a body that is not UTF-8 is an error, not U+FFFD.
func JSONBody(msg types.Message, into any) error {
	if !utf8.Valid(msg.Body) {
		return errors.New("invalid UTF-8")
	}
	return json.Unmarshal(msg.Body, into)
}

// PublishJSON buffers `value` as JSON (content type application/json), sent
// when the handler acks. The error is the host's explanation of a refusal.
func PublishJSON(exchange, routingKey string, value any, correlationID witTypes.Option[string]) error {
	body, err := json.Marshal(value)
	if err != nil {
		return err
	}
	return Publish(types.Outbound{
		Exchange:        exchange,
		RoutingKey:      routingKey,
		Body:            body,
		ContentType:     witTypes.Some("application/json"),
		ContentEncoding: witTypes.None[string](),
		CorrelationId:   correlationID,
		Type:            witTypes.None[string](),
		Headers:         types.Headers{},
	})
}

// Publish is the host's publish, with a refusal as an error.
func Publish(out types.Outbound) error {
	r := host.Publish(out)
	if !r.IsErr() {
		return nil
	}
	e := r.Err()
	if e.Tag() == types.PublishError_NotAllowed {
		return errors.New(e.NotAllowed())
	}
	return errors.New(e.LimitExceeded())
}

// KvIncrement adds `delta` to the counter `key` in the handler's key-value
// namespace and returns its value as this message sees it. Like every
// key-value write it is committed with the message's done-marker, and only
// if the handler acks.
func KvIncrement(key string, delta int64) (int64, error) {
	r := kv.Increment(key, delta)
	if r.IsErr() {
		return 0, kvError(r.Err())
	}
	return r.Ok(), nil
}

// KvGet is the value of `key` (ok false when it is not set), with the
// message's own earlier writes applied.
func KvGet(key string) ([]byte, bool, error) {
	r := kv.Get(key)
	if r.IsErr() {
		return nil, false, kvError(r.Err())
	}
	v := r.Ok()
	if v.IsNone() {
		return nil, false, nil
	}
	return v.Some(), true, nil
}

// KvSet sets `key` to `value` (no expiry), committed on ack.
func KvSet(key string, value []byte) error {
	r := kv.Set(key, value, witTypes.None[uint64]())
	if r.IsErr() {
		return kvError(r.Err())
	}
	return nil
}

func kvError(e kv.KvError) error {
	switch e.Tag() {
	case kv.KvError_LimitExceeded:
		return errors.New("limit exceeded: " + e.LimitExceeded())
	case kv.KvError_InvalidKey:
		return errors.New("invalid key: " + e.InvalidKey())
	case kv.KvError_NotACounter:
		return errors.New("not a counter: " + e.NotACounter())
	default:
		return errors.New("unavailable: " + e.Unavailable())
	}
}

// Header is the top-level header `name`.
func Header(msg types.Message, name string) (types.FieldValue, bool) {
	for _, h := range msg.Headers.Entries {
		if h.Name == name {
			return h.Value, true
		}
	}
	return types.FieldValue{}, false
}

// HeaderString is a text header; !ok if absent or of another type.
func HeaderString(msg types.Message, name string) (string, bool) {
	v, ok := Header(msg, name)
	if !ok || v.Tag() != types.FieldValue_Text {
		return "", false
	}
	return v.Text(), true
}

// HeaderInt is an integer header of any width; !ok if absent, of another
// type or past int64.
func HeaderInt(msg types.Message, name string) (int64, bool) {
	v, ok := Header(msg, name)
	if !ok {
		return 0, false
	}
	switch v.Tag() {
	case types.FieldValue_I8:
		return int64(v.I8()), true
	case types.FieldValue_U8:
		return int64(v.U8()), true
	case types.FieldValue_I16:
		return int64(v.I16()), true
	case types.FieldValue_U16:
		return int64(v.U16()), true
	case types.FieldValue_I32:
		return int64(v.I32()), true
	case types.FieldValue_U32:
		return int64(v.U32()), true
	case types.FieldValue_I64:
		return v.I64(), true
	case types.FieldValue_Timestamp:
		if t := v.Timestamp(); t <= 1<<63-1 {
			return int64(t), true
		}
	}
	return 0, false
}

// HeaderFloat is a float header; !ok if absent or of another type.
func HeaderFloat(msg types.Message, name string) (float64, bool) {
	v, ok := Header(msg, name)
	switch {
	case ok && v.Tag() == types.FieldValue_F32:
		return float64(v.F32()), true
	case ok && v.Tag() == types.FieldValue_F64:
		return v.F64(), true
	}
	return 0, false
}

// HeaderBool is a boolean header; !ok if absent or of another type.
func HeaderBool(msg types.Message, name string) (bool, bool) {
	v, ok := Header(msg, name)
	if !ok || v.Tag() != types.FieldValue_Boolean {
		return false, false
	}
	return v.Boolean(), true
}

// Config is the `[handler.config]` value of `key`, or `fallback`.
func Config(key, fallback string) string {
	return host.Config(key).SomeOr(fallback)
}

// Log writes a line to the host's log at info level.
func Log(format string, args ...any) {
	host.Log(types.Level_Info, fmt.Sprintf(format, args...))
}

// Ack: done; buffered publishes go out, then the message is acked.
func Ack() types.Outcome {
	return types.MakeOutcomeAck()
}

// Retry: again later, after `afterMs` milliseconds, or the handler's
// backoff when negative.
func Retry(reason string, afterMs int64) types.Outcome {
	delay := witTypes.None[uint64]()
	if afterMs >= 0 {
		delay = witTypes.Some(uint64(afterMs))
	}
	return types.MakeOutcomeRetry(types.Retry{DelayMs: delay, Reason: reason})
}

// Reject: never again; dead-letter the message with `reason`.
func Reject(reason string) types.Outcome {
	return types.MakeOutcomeReject(reason)
}
