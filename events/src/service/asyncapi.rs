//! The event contract as an AsyncAPI 3.0 document, generated from this crate's types (their
//! JSON schemas as utoipa derives them, the names and versions in `crate`). It is shipped as
//! `events/asyncapi.json` beside the services' OpenAPI documents; a test holds that file to
//! what this module generates, so the file cannot drift from the types. After a change to the
//! contract, write it again with
//! `UPDATE_ASYNCAPI=1 cargo test -p events asyncapi_json_is_what_the_types_generate`.

use crate::{
    EventType, BINDING_KEY, CONTENT_TYPE, DEAD_LETTER_EXCHANGE, EXCHANGE, HEADER_CORRELATION_ID,
    HEADER_TODO_ID, HEADER_VERSION, QUERY_QUEUE, SCHEMA_VERSION,
};
use serde_json::{json, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(components(schemas(crate::Envelope, crate::TodoState, crate::EventType, crate::Field)))]
struct Contract;

const TYPES: [EventType; 3] = [
    EventType::TodoCreated,
    EventType::TodoUpdated,
    EventType::TodoDeleted,
];

/// The document.
pub fn document() -> Value {
    let mut schemas = serde_json::to_value(Contract::openapi().components)
        .ok()
        .and_then(|c| c.get("schemas").cloned())
        .unwrap_or_else(|| json!({}));
    // What the types cannot say: versions start at 1, and `changed` may name a field a newer
    // version added (a reader leaves it out), so its items are open strings.
    let envelope = &mut schemas["Envelope"]["properties"];
    envelope["schema_version"]["minimum"] = json!(1);
    envelope["changed"]["items"] = json!({
        "type": "string",
        "description": "A field's name: `title`, `description`, `completed`, `due_at` in this \
                        version (see `Field`); a newer version may name more.",
    });
    let mut messages = serde_json::Map::new();
    let mut refs = serde_json::Map::new();
    for t in TYPES {
        let data = match t {
            EventType::TodoDeleted => "`data` is null.",
            EventType::TodoCreated => "`data` is the new todo's state; `version` is 1.",
            EventType::TodoUpdated => {
                "`data` is the todo's whole state after the change; `changed` names what changed."
            }
        };
        messages.insert(
            t.as_str().to_string(),
            json!({
                "name": t.as_str(),
                "title": t.as_str(),
                "summary": data,
                "contentType": CONTENT_TYPE,
                "headers": {
                    "type": "object",
                    "properties": {
                        HEADER_TODO_ID: {"type": "integer", "format": "int64"},
                        HEADER_VERSION: {"type": "integer", "format": "int64"},
                        HEADER_CORRELATION_ID: {"type": "string"},
                    },
                },
                "payload": {"$ref": "#/components/schemas/Envelope"},
                "correlationId": {"location": "$message.payload#/correlation_id"},
                "bindings": {"amqp": {
                    "contentEncoding": "utf-8",
                    "messageType": t.as_str(),
                    "bindingVersion": "0.3.0",
                }},
            }),
        );
        refs.insert(
            t.as_str().to_string(),
            json!({"$ref": format!("#/components/messages/{}", t.as_str())}),
        );
    }
    let routing: Vec<String> = TYPES.iter().map(|t| t.routing_key().to_string()).collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "todo events",
            "version": SCHEMA_VERSION.to_string(),
            "description": format!(
                "What command-service publishes and query-service consumes: one persistent \
                 message per event, published with confirms to the durable topic exchange \
                 `{EXCHANGE}` under the routing keys {}, `message_id` = event_id, `type` = \
                 event_type. The version is the envelope's `schema_version`: every version \
                 only adds optional fields to the one before, a reader upcasts older versions \
                 and reads newer ones as its own without the fields it does not know \
                 (events/README.md, \"Versions of the contract\"). A message outside the \
                 contract goes to `{DEAD_LETTER_EXCHANGE}` with its reason.",
                routing.join(", ")
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": {
            "todoEvents": {
                "address": "todo.{event}",
                "title": EXCHANGE,
                "parameters": {"event": {"enum": ["created", "updated", "deleted"]}},
                "messages": refs,
                "bindings": {"amqp": {
                    "is": "routingKey",
                    "exchange": {"name": EXCHANGE, "type": "topic", "durable": true, "autoDelete": false, "vhost": "/"},
                    "bindingVersion": "0.3.0",
                }},
            },
        },
        "operations": {
            "publishTodoEvents": {
                "action": "send",
                "title": "command-service's relay publishes each committed event, in position order",
                "channel": {"$ref": "#/channels/todoEvents"},
                "bindings": {"amqp": {"deliveryMode": 2, "mandatory": true, "bindingVersion": "0.3.0"}},
            },
            "consumeTodoEvents": {
                "action": "receive",
                "title": format!("query-service consumes from the quorum queue {QUERY_QUEUE} (bound with {BINDING_KEY})"),
                "channel": {"$ref": "#/channels/todoEvents"},
                "bindings": {"amqp": {"ack": true, "bindingVersion": "0.3.0"}},
            },
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `v` with every object's keys in order, whatever map serde_json was built with.
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }

    #[test]
    fn asyncapi_json_is_what_the_types_generate() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi.json");
        let generated = sorted(document());
        if std::env::var_os("UPDATE_ASYNCAPI").is_some() {
            let text = serde_json::to_string_pretty(&generated).expect("JSON") + "\n";
            std::fs::write(&path, text).expect("write asyncapi.json");
        }
        let shipped: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        assert!(
            shipped == generated,
            "events/asyncapi.json differs from what the types generate; write it again with \
             UPDATE_ASYNCAPI=1 cargo test -p events asyncapi_json_is_what_the_types_generate"
        );
    }

    #[test]
    fn every_message_names_an_event_type_and_the_envelope_schema_lists_every_field() {
        let doc = document();
        for t in TYPES {
            assert_eq!(
                doc["components"]["messages"][t.as_str()]["name"],
                t.as_str()
            );
        }
        let envelope = &doc["components"]["schemas"]["Envelope"]["properties"];
        let sample = serde_json::to_value(crate::Envelope {
            event_id: uuid::Uuid::nil(),
            event_type: EventType::TodoCreated,
            schema_version: SCHEMA_VERSION,
            todo_id: 1,
            version: 1,
            position: 1,
            occurred_at: chrono::Utc::now(),
            correlation_id: String::new(),
            causation_id: None,
            actor: None,
            data: None,
            changed: Vec::new(),
        })
        .expect("JSON");
        for key in sample.as_object().expect("an object").keys() {
            assert!(envelope.get(key).is_some(), "the schema lists {key}");
        }
        let state = &doc["components"]["schemas"]["TodoState"]["properties"];
        assert!(state.get("due_at").is_some(), "version 2's field: {state}");
        assert_eq!(doc["info"]["version"], SCHEMA_VERSION.to_string());
    }
}
