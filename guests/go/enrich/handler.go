// The enrich handler, in Go. The same handler exists in Rust, Python,
// JavaScript and C, and all five behave alike to the byte;
// tests/tests/polyglot.rs holds them to it.
//
// It parses the body as a JSON object, adds the config field `field`
// (default `enriched`) set to the config string `value` (default empty) and
// `attempt` set to the delivery attempt, publishes the object as JSON and
// acks. A body that is not a JSON object is rejected (dead-lettered) with a
// reason that starts with `body is not a JSON object: `.
//
// Config keys: `field`, `value`, `out_exchange` (default ""),
// `out_routing_key` (default: the input routing key + ".out").
//
// The package is `export_wit_world`: the generated bindings call its
// Handle for the world's `handle` export (`bash guests/go/build.sh`).
package export_wit_world

import (
	"encoding/json"
	"unicode/utf8"

	host "wit_component/warren_handler_host"
	types "wit_component/warren_handler_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

const notAnObject = "body is not a JSON object: "

func Handle(msg types.Message) types.Outcome {
	// encoding/json would turn bad UTF-8 and lone surrogates into U+FFFD;
	// the other languages refuse both, and so do we.
	if !utf8.Valid(msg.Body) {
		return types.MakeOutcomeReject(notAnObject + "invalid UTF-8")
	}
	if why := loneSurrogate(msg.Body); why != "" {
		return types.MakeOutcomeReject(notAnObject + why)
	}
	var value any
	if err := json.Unmarshal(msg.Body, &value); err != nil {
		return types.MakeOutcomeReject(notAnObject + err.Error())
	}
	object, ok := value.(map[string]any)
	if !ok {
		return types.MakeOutcomeReject(notAnObject + "it is " + kind(value))
	}
	object[config("field", "enriched")] = config("value", "")
	object["attempt"] = msg.Attempt
	body, err := json.Marshal(object)
	if err != nil {
		return types.MakeOutcomeReject(notAnObject + err.Error())
	}

	out := types.Outbound{
		Exchange:        config("out_exchange", ""),
		RoutingKey:      config("out_routing_key", msg.RoutingKey+".out"),
		Body:            body,
		ContentType:     witTypes.Some("application/json"),
		ContentEncoding: witTypes.None[string](),
		CorrelationId:   msg.CorrelationId,
		Type:            witTypes.None[string](),
		Headers:         types.Headers{},
	}
	if r := host.Publish(out); r.IsErr() {
		// Both cases of publish-error carry the host's explanation.
		return types.MakeOutcomeReject("cannot publish: " + publishError(r.Err()))
	}
	return types.MakeOutcomeAck()
}

// The config value of `key`, or `fallback` if it is not set.
func config(key, fallback string) string {
	return host.Config(key).SomeOr(fallback)
}

func publishError(e types.PublishError) string {
	if e.Tag() == types.PublishError_NotAllowed {
		return e.NotAllowed()
	}
	return e.LimitExceeded()
}

// What a JSON value that is not an object is, as the reject reason says it.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	default:
		return "an array"
	}
}

// Names a `\uXXXX` escape in a string of the JSON text that is half of a
// UTF-16 surrogate pair without its other half, or returns "".
func loneSurrogate(text []byte) string {
	inString := false
	for i := 0; i < len(text); i++ {
		c := text[i]
		if !inString {
			if c == '"' {
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 < len(text) && text[i+1] == 'u' {
				u, ok := hex4(text, i+2)
				if ok && u >= 0xd800 && u <= 0xdbff {
					low, lok := uint16(0), false
					if i+7 < len(text) && text[i+6] == '\\' && text[i+7] == 'u' {
						low, lok = hex4(text, i+8)
					}
					if !lok || low < 0xdc00 || low > 0xdfff {
						return "a string holds a lone surrogate"
					}
					i += 11
					continue
				}
				if ok && u >= 0xdc00 && u <= 0xdfff {
					return "a string holds a lone surrogate"
				}
			}
			i++ // the escaped character
		}
	}
	return ""
}

// The four hex digits at text[at:], if there are four.
func hex4(text []byte, at int) (uint16, bool) {
	if at+4 > len(text) {
		return 0, false
	}
	var v uint16
	for _, c := range text[at : at+4] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint16(d)
	}
	return v, true
}
