//! The operator routes both OpenAPI documents declare, and (feature `testing`) the checks of a
//! service's OpenAPI document (derived from its types with utoipa) against what it
//! serves: the operations it lists against the route table, and each answer's body against the
//! schema documented for its route and status. Both services' tests use it.
//!
//! The schema check covers what the documents use: `$ref` to `#/components/schemas`, `type`
//! (one or a list, as OpenAPI 3.1 writes nullable), `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `oneOf`/`anyOf`/`allOf`. An object schema that
//! lists properties is taken as closed: a field the document does not name fails the check.

#[cfg(feature = "testing")]
use serde_json::Value;
#[cfg(feature = "testing")]
use std::collections::BTreeSet;

#[cfg(feature = "testing")]
/// Every `(method, path)` the document lists, methods in lower case.
pub fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .filter(|(method, _)| {
                    ["get", "post", "put", "patch", "delete"].contains(&method.as_str())
                })
                .map(move |(method, _)| (method.clone(), path.clone()))
        })
        .collect()
}

#[cfg(feature = "testing")]
/// The documented path template a concrete path matches (`/todos/7` -> `/todos/{id}`).
pub fn template_of(doc: &Value, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object()?.keys().find_map(|template| {
        let t: Vec<&str> = template.split('/').collect();
        (t.len() == parts.len()
            && t.iter()
                .zip(&parts)
                .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}'))))
        .then(|| template.clone())
    })
}

#[cfg(feature = "testing")]
/// What is wrong with an answer of `status` with `body` (and its content type) to `method
/// path`, against the document: an undocumented route or status, a documented body missing, a
/// body that does not fit its schema. Empty when it fits.
pub fn check_answer(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<String> {
    let method = method.to_lowercase();
    let Some(template) = template_of(doc, path) else {
        return vec![format!("{method} {path}: no documented path")];
    };
    let operation = &doc["paths"][&template][&method];
    if operation.is_null() {
        return vec![format!("{method} {template}: not documented")];
    }
    let response = &operation["responses"][status.to_string()];
    if response.is_null() {
        return vec![format!(
            "{method} {template}: status {status} not documented"
        )];
    }
    let Some(content) = response["content"].as_object() else {
        return if body.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "{method} {template} {status}: a body, where none is documented"
            )]
        };
    };
    let media = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let Some(documented) = content.get(media) else {
        return vec![format!(
            "{method} {template} {status}: content type {media:?} not documented (documented: {:?})",
            content.keys().collect::<Vec<_>>()
        )];
    };
    let Some(schema) = documented.get("schema") else {
        return Vec::new();
    };
    if !media.ends_with("json") {
        return Vec::new();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => check(doc, schema, &value, "$")
            .into_iter()
            .map(|e| format!("{method} {template} {status}: {e}"))
            .collect(),
        Err(err) => vec![format!("{method} {template} {status}: not JSON: {err}")],
    }
}

#[cfg(feature = "testing")]
/// What is wrong with `value` against `schema` (within `doc`, for `$ref`s), each naming the
/// JSON path at `at`.
pub fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let Some(name) = reference.strip_prefix("#/components/schemas/") else {
            return vec![format!("{at}: unsupported $ref {reference}")];
        };
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return vec![format!("{at}: $ref to missing schema {name}")];
        }
        return check(doc, target, value, at);
    }
    let mut errors = Vec::new();
    for (key, any) in [("oneOf", false), ("anyOf", false), ("allOf", true)] {
        if let Some(options) = schema[key].as_array() {
            let fits: Vec<bool> = options
                .iter()
                .map(|o| check(doc, o, value, at).is_empty())
                .collect();
            let ok = if any {
                fits.iter().all(|f| *f)
            } else {
                fits.iter().any(|f| *f)
            };
            if !ok {
                errors.push(format!("{at}: fits no branch of {key}: {value}"));
            }
        }
    }
    if let Some(types) = types_of(schema) {
        if !types.iter().any(|t| is_type(value, t)) {
            errors.push(format!("{at}: {value} is not of type {types:?}"));
            return errors;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} not one of {allowed:?}"));
        }
    }
    if let Value::Object(fields) = value {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or("");
            if !fields.contains_key(name) {
                errors.push(format!("{at}: required field {name} missing"));
            }
        }
        for (name, field) in fields {
            match properties.and_then(|p| p.get(name)) {
                Some(property) => {
                    errors.extend(check(doc, property, field, &format!("{at}.{name}")))
                }
                // An answer carries only documented fields: an object schema with properties
                // is closed unless it says `additionalProperties: true` (or a schema).
                None if properties.is_some()
                    && !matches!(
                        &schema["additionalProperties"],
                        Value::Bool(true) | Value::Object(_)
                    ) =>
                {
                    errors.push(format!("{at}: field {name} not documented"));
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (i, element) in items.iter().enumerate() {
            errors.extend(check(doc, item, element, &format!("{at}[{i}]")));
        }
    }
    errors
}

#[cfg(feature = "testing")]
fn types_of(schema: &Value) -> Option<Vec<String>> {
    match &schema["type"] {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(feature = "testing")]
fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// `If-Match` as `precondition` reads it: `*`, or a comma-separated list of entity tags
/// (RFC 9110 8.8.3: `"…"` or `W/"…"`, visible ASCII but `"` inside), blanks around allowed.
pub const IF_MATCH_PATTERN: &str =
    r#"^[ \t]*(\*|(W/)?"[\x21\x23-\x7E]*"([ \t]*,[ \t]*(W/)?"[\x21\x23-\x7E]*")*)[ \t]*$"#;

/// `Idempotency-Key`: 1 to 255 characters of visible ASCII, blanks inside, none at either end
/// (a header's own blanks around it are not part of it).
pub const IDEMPOTENCY_KEY_PATTERN: &str =
    r"^[ \t]*[\x21-\x7E]([\t\x20-\x7E]{0,253}[\x21-\x7E])?[ \t]*$";

/// The schema of an id, a version or a log position: 1 to `events::limits::MAX_ID`.
pub fn id_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": crate::limits::MAX_ID,
    })
}

/// Sets each key of `constraints` on `target` (an object).
pub fn merge(target: &mut serde_json::Value, constraints: serde_json::Value) {
    if let (Some(target), serde_json::Value::Object(constraints)) =
        (target.as_object_mut(), constraints)
    {
        target.extend(constraints);
    }
}

/// The schema of `property` of the component schema `schema`; panics (at start, and in the
/// tests that build the document) when the document has no such property.
pub fn property<'a>(
    doc: &'a mut serde_json::Value,
    schema: &str,
    property: &str,
) -> &'a mut serde_json::Value {
    doc.pointer_mut(&format!(
        "/components/schemas/{schema}/properties/{property}"
    ))
    .unwrap_or_else(|| panic!("the document has no {schema}.{property}"))
}

/// Every operation of the document, with its method and path.
fn operations_mut(
    doc: &mut serde_json::Value,
) -> impl Iterator<Item = (String, String, &mut serde_json::Value)> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .flat_map(|(path, ops)| {
            let path = path.clone();
            ops.as_object_mut()
                .into_iter()
                .flat_map(|ops| ops.iter_mut())
                .filter(|(method, _)| {
                    ["get", "post", "put", "patch", "delete"].contains(&method.as_str())
                })
                .map(move |(method, op)| (method.clone(), path.clone(), op))
        })
}

/// The schema of every parameter named `name` (case-insensitively) in the document.
pub fn parameters_named<'a>(
    doc: &'a mut serde_json::Value,
    name: &'a str,
) -> impl Iterator<Item = &'a mut serde_json::Value> + 'a {
    operations_mut(doc).flat_map(move |(_, _, op)| {
        op["parameters"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .filter(move |p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
    })
}

/// What both documents declare the same way, on top of what utoipa derived: every path id is
/// an id ([`id_schema`]); every operation takes `X-Request-Id` (any value; an unusable one is
/// replaced) and may answer 405 with `Allow` (a method its path does not take); every answer
/// carries `X-Request-Id`; `If-Match` and `Idempotency-Key` have their forms.
pub fn finish(doc: &mut serde_json::Value) {
    use serde_json::json;
    for parameter in parameters_named(doc, "id") {
        parameter["schema"] = id_schema();
    }
    for parameter in parameters_named(doc, "If-Match") {
        parameter["schema"] = json!({"type": "string", "pattern": IF_MATCH_PATTERN});
    }
    for parameter in parameters_named(doc, "Idempotency-Key") {
        parameter["schema"] = json!({"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN});
    }
    let request_id = json!({
        "name": "X-Request-Id",
        "in": "header",
        "required": false,
        "description": "The request's correlation id, answered back and kept as the event's \
            correlation_id. Any value is accepted: one that is not 1 to 128 visible ASCII \
            characters is replaced by a new UUID, never refused.",
        "schema": {"type": "string"},
    });
    for (_, _, op) in operations_mut(doc) {
        // A header is text or absent, never null (utoipa writes an `Option<String>` as
        // `[string, null]`).
        for parameter in op["parameters"].as_array_mut().into_iter().flatten() {
            if parameter["in"] == "header"
                && parameter["schema"]["type"] == json!(["string", "null"])
            {
                parameter["schema"]["type"] = json!("string");
            }
        }
        let parameters = op["parameters"].as_array_mut().map(std::mem::take);
        let mut parameters: Vec<serde_json::Value> = parameters
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                !p["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("x-request-id"))
            })
            .collect();
        parameters.push(request_id.clone());
        op["parameters"] = json!(parameters);
        op["responses"]["405"] = json!({
            "description": "The path does not take this method; Allow lists those it takes",
            "headers": {"Allow": {
                "required": true,
                "description": "The methods the path takes, comma-separated",
                "schema": {"type": "string"},
            }},
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        });
        for (_, response) in op["responses"].as_object_mut().into_iter().flatten() {
            response["headers"]["X-Request-Id"] = json!({
                "description": "The request's X-Request-Id if usable, else a new UUID",
                "schema": {"type": "string"},
            });
        }
    }
}

/// `GET /health`, as both documents declare it.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process answers", body = serde_json::Value)))]
pub fn health() {}

/// `GET /metrics`, as both documents declare it.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text")))]
pub fn metrics() {}

/// `GET /openapi.json`, as both documents declare it.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", body = serde_json::Value)))]
pub fn openapi() {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "paths": {
                "/todos/{id}": {"get": {"responses": {
                    "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Todo"}}}},
                    "204": {"description": "none"}
                }}}
            },
            "components": {"schemas": {"Todo": {
                "type": "object",
                "required": ["id", "title"],
                "additionalProperties": false,
                "properties": {
                    "id": {"type": "integer"},
                    "title": {"type": "string"},
                    "description": {"type": ["string", "null"]},
                    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}
                }
            }}}
        })
    }

    fn answer(status: u16, body: Value) -> Vec<String> {
        let body = serde_json::to_vec(&body).expect("json");
        check_answer(
            &doc(),
            "GET",
            "/todos/7",
            status,
            Some("application/json"),
            &body,
        )
    }

    #[test]
    fn an_answer_that_fits_its_schema_passes() {
        assert!(answer(
            200,
            json!({"id": 7, "title": "t", "description": null, "tags": ["a"]})
        )
        .is_empty());
        assert!(check_answer(&doc(), "get", "/todos/7", 204, None, b"").is_empty());
    }

    #[test]
    fn each_misfit_is_named() {
        let cases = [
            (json!({"title": "t"}), "required field id missing"),
            (json!({"id": "7", "title": "t"}), "$.id"),
            (
                json!({"id": 7, "title": "t", "extra": 1}),
                "field extra not documented",
            ),
            (
                json!({"id": 7, "title": "t", "description": 3}),
                "$.description",
            ),
            (json!({"id": 7, "title": "t", "tags": ["c"]}), "$.tags[0]"),
            (json!([1]), "not of type"),
        ];
        for (body, expected) in cases {
            let errors = answer(200, body.clone());
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{body}: {errors:?}"
            );
        }
        assert!(answer(201, json!({}))[0].contains("status 201 not documented"));
        assert!(
            check_answer(&doc(), "post", "/todos/7", 200, None, b"")[0].contains("not documented")
        );
        assert!(
            check_answer(&doc(), "get", "/other", 200, None, b"")[0].contains("no documented path")
        );
        assert!(
            check_answer(&doc(), "get", "/todos/7", 200, Some("text/plain"), b"x")[0]
                .contains("content type")
        );
    }

    #[test]
    fn operations_and_templates() {
        let ops: Vec<_> = operations(&doc()).into_iter().collect();
        assert_eq!(ops, [("get".to_string(), "/todos/{id}".to_string())]);
        assert_eq!(
            template_of(&doc(), "/todos/12?min_version=2").as_deref(),
            Some("/todos/{id}")
        );
        assert_eq!(template_of(&doc(), "/todos"), None);
    }
}
