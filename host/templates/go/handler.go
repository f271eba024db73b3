// The {{name}} handler: takes a JSON object, adds `handled_by` (and the
// `tenant` header, when the message has one) and `seen` (how many messages
// of that tenant it has handled, counted in the key-value store), and
// publishes it as JSON to the configured destination; a body that is not a
// JSON object is rejected.
//
// Config keys (the `[handler.config]` table of the host's config file, and
// of handler.toml for `warren test`): `handled_by` (default "{{name}}"),
// `out_exchange` (default "", the default exchange) and `out_routing_key`
// (default: the input routing key + ".out").
//
// The package is export_wit_world: the bindings `bash build.sh` generates
// from wit/handler.wit call its Handle for the world's `handle` export.
package export_wit_world

import (
	types "wit_component/warren_handler_types"
)

func Handle(msg types.Message) types.Outcome {
	Log("got %d bytes", len(msg.Body))
	var obj map[string]any
	if err := JSONBody(msg, &obj); err != nil || obj == nil {
		// Never try again: the message goes to the dead-letter queue.
		why := "it is null"
		if err != nil {
			why = err.Error()
		}
		return Reject("body is not a JSON object: " + why)
	}
	obj["handled_by"] = Config("handled_by", "{{name}}")
	tenant, ok := HeaderString(msg, "tenant")
	if ok {
		obj["tenant"] = tenant
	} else {
		tenant = "-"
	}
	// The key-value store: one counter per tenant. The write is committed
	// with the message's done-marker, and only on ack, so a redelivered or
	// duplicate message counts once.
	seen, err := KvIncrement("count:"+tenant, 1)
	if err != nil {
		return Retry("key-value store: "+err.Error(), -1)
	}
	obj["seen"] = seen
	// Buffered: sent only if we return Ack(). To try the message again later
	// instead, return Retry("why", 5000) (or -1 for the handler's backoff).
	routingKey := Config("out_routing_key", msg.RoutingKey+".out")
	if err := PublishJSON(Config("out_exchange", ""), routingKey, obj, msg.CorrelationId); err != nil {
		return Reject("cannot publish: " + err.Error())
	}
	return Ack()
}
