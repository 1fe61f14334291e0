//! Diesel table definitions, matching `migrations/`.

diesel::table! {
    todos (id) {
        id -> Int8,
        title -> Text,
        description -> Nullable<Text>,
        completed -> Bool,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        due_at -> Nullable<Timestamptz>,
        erased_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    events (seq) {
        seq -> Int8,
        position -> Nullable<Int8>,
        event_id -> Uuid,
        event_type -> Text,
        todo_id -> Int8,
        version -> Int8,
        occurred_at -> Timestamptz,
        correlation_id -> Text,
        data -> Nullable<Jsonb>,
        changed -> Jsonb,
        causation_id -> Nullable<Text>,
        actor -> Nullable<Text>,
        traceparent -> Nullable<Text>,
    }
}

diesel::table! {
    relay_cursor (singleton) {
        singleton -> Bool,
        position -> Int8,
        publish_attempts -> Int4,
        last_error -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (key) {
        key -> Text,
        request_hash -> Text,
        response_status -> Int4,
        response_body -> Jsonb,
        created_at -> Timestamptz,
    }
}
