//! The stores themselves: what PostgreSQL (pgbench), MongoDB and RabbitMQ do without the
//! services, and the set-up and clean-up of what the run creates.

use crate::Config;
use anyhow::{bail, Context};
use bson::{doc, Document};
use chrono::{TimeZone, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use events::{Envelope, EventType, TodoState, SCHEMA_VERSION};
use futures_util::{StreamExt, TryStreamExt};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mongodb::Client;
use query_service::store::{self, Counts, Store};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn admin(config: &Config) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(&config.admin_database_url)
        .await
        .context("PostgreSQL reachable (scripts/dev-services.sh up)")
}

#[derive(diesel::QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    t: String,
}

#[derive(diesel::QueryableByName)]
struct Pair {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    a: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    b: i64,
}

pub async fn postgres_version(config: &Config) -> anyhow::Result<String> {
    let mut conn = admin(config).await?;
    let v: Text = diesel::sql_query("SELECT current_setting('server_version') AS t")
        .get_result(&mut conn)
        .await?;
    Ok(v.t)
}

pub async fn mongo_server(config: &Config) -> anyhow::Result<String> {
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let info = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await?;
    let version = info.get_str("version").unwrap_or("?");
    Ok(
        if std::process::Command::new("sh")
            .args(["-c", "command -v mongod"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            format!("mongod {version}")
        } else {
            format!("secantusdb (reports MongoDB {version})")
        },
    )
}

pub async fn create_database(config: &Config, name: &str) -> anyhow::Result<()> {
    let mut conn = admin(config).await?;
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    Ok(())
}

/// command-service's own migrations, so pgbench runs against the same schema.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let limits = command_service::settings::Settings::from_vars(Vec::new())?.database_limits();
    command_service::db::migrate(database_url, 3, limits).await
}

/// Events in a command-service database's log, and its highest todo id.
pub async fn log_size(config: &Config, database: &str) -> anyhow::Result<(i64, i64)> {
    let mut conn = AsyncPgConnection::establish(&config.database_url(database)).await?;
    let p: Pair = diesel::sql_query(
        "SELECT (SELECT count(*) FROM events) AS a, (SELECT coalesce(max(id), 0) FROM todos) AS b",
    )
    .get_result(&mut conn)
    .await?;
    Ok((p.a, p.b))
}

/// command-service's `commands::CREATE` with its placeholders replaced by values pgbench sends
/// (a fresh event id each time, `now()` for the time), as a pgbench script.
pub fn pgbench_script(config: &Config) -> anyhow::Result<PathBuf> {
    let data = r#"'{"title": "bench todo", "description": "written by pgbench", "completed": false, "created_at": "2026-11-25T00:00:00Z", "updated_at": "2026-11-25T00:00:00Z"}'::jsonb"#;
    let values = [
        ("$11", "NULL"),
        ("$10", "'anonymous'"),
        ("$9", "gen_random_uuid()::text"),
        ("$8", "NULL"),
        ("$7", data),
        ("$6", "'pgbench'"),
        ("$5", "gen_random_uuid()"),
        ("$4", "now()"),
        ("$3", "false"),
        ("$2", "'written by pgbench'"),
        ("$1", "'bench todo'"),
    ];
    let mut sql = command_service::commands::CREATE.to_string();
    for (placeholder, value) in values {
        sql = sql.replace(placeholder, value);
    }
    if sql.contains('$') {
        bail!("commands::CREATE has a placeholder this script does not fill: {sql}");
    }
    let path = config.work.join("pgbench-create.sql");
    std::fs::write(&path, format!("{sql};\n"))?;
    Ok(path)
}

/// Parts of a `postgres://user:password@host:port/db` URL.
fn url_parts(url: &str) -> (String, String, String, String) {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let (auth, hostpart) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let host = hostpart.split('/').next().unwrap_or("127.0.0.1:5432");
    let (host, port) = host.split_once(':').unwrap_or((host, "5432"));
    (user.into(), password.into(), host.into(), port.into())
}

/// Transactions per second pgbench reaches with `script` at `clients` clients.
pub async fn pgbench(
    config: &Config,
    database: &str,
    script: &std::path::Path,
    clients: u32,
) -> anyhow::Result<f64> {
    let (user, password, host, port) = url_parts(&config.admin_database_url);
    let mut command = Command::new("pgbench");
    command.env("PGPASSWORD", password).args([
        "-h",
        &host,
        "-p",
        &port,
        "-U",
        &user,
        "-n",
        "-M",
        "prepared",
        "-c",
        &clients.to_string(),
        "-j",
        &clients.min(2).to_string(),
        "-T",
        &config.seconds.to_string(),
        "-f",
        &script.display().to_string(),
        database,
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!(
            "pgbench failed: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l[6..].split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

/// A plain publisher: the envelopes the relay would send, published as the relay publishes them
/// (`command_service::relay::publish`: persistent, mandatory, with confirms) to the run's
/// exchange and so to the projection's quorum queue, in rounds of `RELAY_BATCH_SIZE` (100)
/// whose confirms are awaited together, for `BENCH_SECONDS`. Messages per second.
pub async fn publisher_rate(config: &Config) -> anyhow::Result<f64> {
    let conn = amqp(config).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let exchange = config.exchange();
    let started = Instant::now();
    let until = started + Duration::from_secs(config.seconds);
    let mut sent = 0i64;
    while Instant::now() < until {
        let mut confirms = Vec::with_capacity(100);
        for _ in 0..100 {
            sent += 1;
            let e = created(sent);
            confirms.push(command_service::relay::publish(&channel, &exchange, &e).await?);
        }
        for c in confirms {
            let confirmation = c.await?;
            if !confirmation.is_ack() {
                bail!("the broker did not confirm a message: {confirmation:?}");
            }
        }
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    Ok(rate)
}

async fn amqp(config: &Config) -> anyhow::Result<Connection> {
    Ok(Connection::connect(&config.amqp_url, ConnectionProperties::default()).await?)
}

/// The run's exchange and the projection's queue, as query-service declares them.
pub async fn declare_queue(config: &Config) -> anyhow::Result<()> {
    let conn = amqp(config).await?;
    let channel = conn.create_channel().await?;
    query_service::consumer::declare_topology(&channel, &config.exchange(), &config.queue())
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// Drops the messages ready in the projection's queue.
pub async fn purge_queue(config: &Config) -> anyhow::Result<()> {
    let conn = amqp(config).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_purge(
            config.queue().as_str().into(),
            lapin::options::QueuePurgeOptions::default(),
        )
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// Messages ready in the projection's queue.
pub async fn queue_depth(config: &Config) -> anyhow::Result<usize> {
    let conn = amqp(config).await?;
    let channel = conn.create_channel().await?;
    let queue = channel
        .queue_declare(
            config.queue().as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let n = queue.message_count() as usize;
    conn.close(200, "done".into()).await?;
    Ok(n)
}

fn created(todo_id: i64) -> Envelope {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 25, 0, 0, 0)
        .single()
        .expect("a valid time")
        + chrono::Duration::milliseconds(todo_id);
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::TodoCreated,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version: 1,
        position: todo_id,
        occurred_at: at,
        correlation_id: "bench".into(),
        causation_id: None,
        actor: None,
        data: Some(TodoState {
            title: format!("bench todo {todo_id}"),
            description: Some("written by scripts/bench.sh".into()),
            completed: todo_id % 3 == 0,
            created_at: at,
            updated_at: at,
            due_at: None,
            erased_at: None,
        }),
        changed: Vec::new(),
    }
}

/// Bulk upserts of `n` new todos per second, through the projection's own command, in bulks
/// of `bulk`, into a collection with `indexes`.
async fn upsert_rate(
    config: &Config,
    database: &str,
    indexes: &[store::IndexSpec],
    n: usize,
    bulk: usize,
) -> anyhow::Result<f64> {
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let db = client.database(database);
    let todos = db.collection::<Document>("todos");
    if !indexes.is_empty() {
        todos.create_indexes(store::index_models(indexes)).await?;
    }
    let events: Vec<Envelope> = (1..=n as i64).map(created).collect();
    let started = Instant::now();
    for chunk in events.chunks(bulk) {
        let reply = db
            .run_command(store::bulk_upsert_command("todos", chunk.iter()))
            .await?;
        if reply.get_array("writeErrors").is_ok_and(|e| !e.is_empty()) {
            bail!("the store refused upserts: {reply}");
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The bulk size the projection uses when a burst is queued (its prefetch), and the store's
/// rate for `n` upserts in such bulks with the service's indexes.
pub async fn store_bulk_rate(config: &Config, n: usize) -> anyhow::Result<(usize, f64)> {
    let bulk = usize::from(query_service::settings::Settings::from_vars(Vec::new())?.amqp_prefetch);
    let rate = upsert_rate(
        config,
        &format!("bench_store_{}", config.run),
        store::INDEXES,
        n,
        bulk,
    )
    .await?;
    Ok((bulk, rate))
}

/// The store's upsert rate with no secondary index, with each one alone, and with all.
pub async fn index_costs(config: &Config, bulk: usize) -> anyhow::Result<Vec<(String, f64)>> {
    let n = 3_000;
    let mut sets: Vec<(String, Vec<store::IndexSpec>)> = vec![("_id only".into(), Vec::new())];
    for index in store::INDEXES {
        sets.push((format!("_id + {}", index.0), vec![*index]));
    }
    sets.push((
        format!("_id + all {} (the service's)", store::INDEXES.len()),
        store::INDEXES.to_vec(),
    ));
    let mut rates = Vec::new();
    for (k, (label, indexes)) in sets.into_iter().enumerate() {
        let database = format!("bench_idx_{}_{k}", config.run);
        let rate = upsert_rate(config, &database, &indexes, n, bulk).await?;
        rates.push((format!("{label} ({n} new todos)"), rate));
    }
    Ok(rates)
}

/// `find_one({_id})` per second for random ids of the range `ids`, `concurrency` at a time.
pub async fn find_by_id_rate(
    config: &Config,
    database: &str,
    ids: (i64, i64),
    concurrency: usize,
) -> anyhow::Result<f64> {
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let todos = client.database(database).collection::<Document>("todos");
    timed(config, concurrency, move || {
        let todos = todos.clone();
        async move {
            let id = rand::random_range(ids.0..=ids.1.max(ids.0));
            todos.find_one(doc! { "_id": id }).await?;
            Ok(())
        }
    })
    .await
}

/// Runs `op` from `concurrency` tasks for `BENCH_SECONDS`; operations per second.
async fn timed<F, Fut>(config: &Config, concurrency: usize, op: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let until = Instant::now() + Duration::from_secs(config.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                op().await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Grows the read model of `database` from `from` to `to` todos fast: the documents the
/// projection would have left (`store::document_after`), inserted in bulk, and the counters it
/// would have kept.
pub async fn fast_fill(
    config: &Config,
    database: &str,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let store = Store::connect(&config.mongodb_uri, database).await?;
    store.ensure_indexes().await?;
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let db = client.database(database);
    let todos = db.collection::<Document>("todos");
    let ids: Vec<i64> = (from as i64 + 1..=to as i64).collect();
    let mut completed = 0i64;
    for chunk in ids.chunks(5_000) {
        let events: Vec<Envelope> = chunk.iter().map(|&id| created(id)).collect();
        completed += events
            .iter()
            .filter(|e| e.data.as_ref().is_some_and(|d| d.completed))
            .count() as i64;
        todos
            .insert_many(events.iter().map(store::document_after))
            .ordered(false)
            .await?;
        store
            .record(Counts::default(), None, store::Highest::of(&events))
            .await?;
    }
    db.collection::<Document>("projection_stats")
        .update_one(
            doc! { "_id": "todos" },
            doc! { "$inc": { "todos_live": ids.len() as i64, "todos_completed": completed },
            "$set": { "counts_kept": true, "sort_keys": 1 } },
        )
        .upsert(true)
        .await?;
    Ok(())
}

/// Fills a fresh pair to `size` todos on both sides, as the pipeline would leave them: in
/// PostgreSQL (`database`, migrated, empty) the todos, their `TodoCreated` events at positions
/// 1..=size and the relay's cursor past them (published), all by `generate_series`; in MongoDB
/// (`mongo_db`) the documents the projection leaves for those same events, and its counters
/// ([`fast_fill`]). `query-service verify` passes on it.
pub async fn fill_pair(
    config: &Config,
    database: &str,
    mongo_db: &str,
    size: usize,
) -> anyhow::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let mut conn = AsyncPgConnection::establish(&config.database_url(database)).await?;
    // The same todos as `created` builds: title, description, completed every third, created
    // (and updated) 1 ms apart from 2026-11-25.
    let series = format!(
        "FROM generate_series(1, {size}) AS g, \
         LATERAL (SELECT timestamptz '2026-11-25 00:00:00+00' + g * interval '1 millisecond' AS t) AS x, \
         LATERAL (SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS ts) AS y"
    );
    for statement in [
        format!(
            "INSERT INTO todos (id, title, description, completed, version, created_at, updated_at) \
             SELECT g, 'bench todo ' || g, 'written by scripts/bench.sh', g % 3 = 0, 1, t, t {series}"
        ),
        format!("SELECT setval(pg_get_serial_sequence('todos', 'id'), {size})"),
        format!(
            "INSERT INTO events (position, event_id, event_type, todo_id, version, occurred_at, correlation_id, data) \
             SELECT g, gen_random_uuid(), 'TodoCreated', g, 1, t, 'bench', jsonb_build_object( \
               'title', 'bench todo ' || g, 'description', 'written by scripts/bench.sh', \
               'completed', g % 3 = 0, 'created_at', ts, 'updated_at', ts) {series}"
        ),
        format!("UPDATE relay_cursor SET position = {size}"),
        "ANALYZE".to_string(),
    ] {
        diesel::sql_query(&statement)
            .execute(&mut conn)
            .await
            .with_context(|| statement.clone())?;
    }
    fast_fill(config, mongo_db, 0, size).await
}

/// The rate at which the store itself saturates on what the projection and a reader of each
/// write do, per write: its share of a bulk of the projection's reads of what the todos hold
/// (`_id: {$in: …}`) and version-guarded upserts, and one read by id (the writer reading it
/// back). `bulk` new todos (ids from 2^40, out of the way of the service's) per round; the
/// reads of a round run 16 at a time. Writes per second over `BENCH_SECONDS`.
pub async fn saturation_rate(config: &Config, mongo_db: &str, bulk: usize) -> anyhow::Result<f64> {
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let db = client.database(mongo_db);
    let todos = db.collection::<Document>("todos");
    let started = Instant::now();
    let until = started + Duration::from_secs(config.seconds);
    let mut next: i64 = 1 << 40;
    let mut written = 0usize;
    while Instant::now() < until {
        let events: Vec<Envelope> = (next..next + bulk as i64).map(created).collect();
        next += bulk as i64;
        let ids: Vec<i64> = events.iter().map(|e| e.todo_id).collect();
        let _: Vec<Document> = todos
            .find(doc! { "_id": { "$in": &ids } })
            .await?
            .try_collect()
            .await?;
        let reply = db
            .run_command(store::bulk_upsert_command("todos", events.iter()))
            .await?;
        if reply.get_array("writeErrors").is_ok_and(|e| !e.is_empty()) {
            bail!("the store refused upserts: {reply}");
        }
        futures_util::stream::iter(ids.clone())
            .map(|id| {
                let todos = todos.clone();
                async move { todos.find_one(doc! { "_id": id }).await }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        written += bulk;
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    todos
        .delete_many(doc! { "_id": { "$gte": 1_i64 << 40 } })
        .await?;
    Ok(rate)
}

/// The store's rate for the cheapest query that returns a page of a time-ordered list: the
/// range of its sort key from the page's first key to its last, in the key's order (the
/// bounds known in advance, which the service does not know), and its plan's stages.
pub async fn sort_page_rate(
    config: &Config,
    database: &str,
    field: &'static str,
    keys: (String, String),
    descending: bool,
    limit: i64,
) -> anyhow::Result<(f64, String)> {
    let (low, high) = if keys.0 <= keys.1 {
        keys
    } else {
        (keys.1, keys.0)
    };
    let filter = doc! { field: { "$gte": &low, "$lte": &high } };
    let sort = doc! { field: if descending { -1 } else { 1 } };
    let plan = winning_plan(config, database, &filter, &sort, Some(limit)).await?;
    let rate = find_rate(config, database, 1, filter, sort, Some(limit)).await?;
    Ok((rate, plan.join(" <- ")))
}

/// `find(filter).sort(sort)[.limit(limit)]` per second on `todos`, `concurrency` at a time,
/// for `BENCH_SECONDS`; an empty answer is an error.
async fn find_rate(
    config: &Config,
    database: &str,
    concurrency: usize,
    filter: Document,
    sort: Document,
    limit: Option<i64>,
) -> anyhow::Result<f64> {
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let todos = client.database(database).collection::<Document>("todos");
    timed(config, concurrency, move || {
        let (todos, filter, sort) = (todos.clone(), filter.clone(), sort.clone());
        async move {
            let mut find = todos.find(filter).sort(sort);
            if let Some(limit) = limit {
                find = find.limit(limit);
            }
            let docs: Vec<Document> = find.await?.try_collect().await?;
            if docs.is_empty() {
                bail!("the page is empty");
            }
            Ok(())
        }
    })
    .await
}

/// The stages of the store's winning plan for `find(filter).sort(sort)[.limit(limit)]` on
/// `todos`, outermost first.
async fn winning_plan(
    config: &Config,
    database: &str,
    filter: &Document,
    sort: &Document,
    limit: Option<i64>,
) -> anyhow::Result<Vec<String>> {
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    let mut find = doc! { "find": "todos", "filter": filter.clone(), "sort": sort.clone() };
    if let Some(limit) = limit {
        find.insert("limit", limit);
    }
    let reply = client
        .database(database)
        .run_command(doc! { "explain": find, "verbosity": "queryPlanner" })
        .await?;
    let plan = reply
        .get_document("queryPlanner")
        .and_then(|q| q.get_document("winningPlan"))
        .with_context(|| format!("no winning plan in {reply}"))?;
    let mut names = Vec::new();
    stages(plan, &mut names);
    Ok(names)
}

fn page_ids(after: i64, n: i64) -> Vec<i64> {
    (after + 1..=after + n).collect()
}

/// The query a page of `limit` in id order sends (`limit + 1` ids, sorted by `_id`) per
/// second, straight to the store: the cheapest query that returns the page's documents.
pub async fn page_rate(
    config: &Config,
    database: &str,
    after: i64,
    limit: i64,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let filter = doc! { "_id": { "$in": page_ids(after, limit + 1) } };
    find_rate(
        config,
        database,
        concurrency,
        filter,
        doc! { "_id": 1 },
        None,
    )
    .await
}

fn stages(plan: &Document, out: &mut Vec<String>) {
    if let Ok(stage) = plan.get_str("stage") {
        out.push(stage.to_string());
    }
    if let Ok(input) = plan.get_document("inputStage") {
        stages(input, out);
    }
    if let Ok(inputs) = plan.get_array("inputStages") {
        for i in inputs {
            if let Some(d) = i.as_document() {
                stages(d, out);
            }
        }
    }
}

/// The store's winning plan for the query a page in id order sends (as query-service sends
/// it: the window of ids and the sort), and whether it sorts in memory.
pub async fn explain_page(
    config: &Config,
    database: &str,
    after: i64,
    limit: i64,
) -> anyhow::Result<(String, bool)> {
    let filter = doc! { "_id": { "$in": page_ids(after, limit + 1) } };
    let names = winning_plan(config, database, &filter, &doc! { "_id": 1 }, None).await?;
    let sorted = names.iter().any(|s| s == "SORT");
    Ok((names.join(" <- "), sorted))
}

/// Removes every database, queue and exchange of this run.
pub async fn cleanup(config: &Config) -> anyhow::Result<()> {
    let mut conn = admin(config).await?;
    let databases: Vec<Text> = diesel::sql_query(format!(
        "SELECT datname AS t FROM pg_database WHERE datname LIKE 'bench\\_%{}'",
        config.run
    ))
    .load(&mut conn)
    .await?;
    for db in databases {
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.t))
            .execute(&mut conn)
            .await?;
    }
    let client = Client::with_uri_str(&config.mongodb_uri).await?;
    for name in client.list_database_names().await? {
        if name.starts_with("bench_") && name.contains(&config.run) {
            client.database(&name).drop().await?;
        }
    }
    let amqp = amqp(config).await?;
    let channel = amqp.create_channel().await?;
    let mut queues = vec![config.queue(), format!("{}.lists", config.queue())];
    queues.extend(config.pair_sizes.iter().map(|s| config.size_queue(*s)));
    queues.push(config.rebuild_queue());
    for q in &queues {
        let _ = channel
            .exchange_delete(
                events::changes_exchange(q).as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        for name in [q.clone(), events::dead_letter_queue(q)] {
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
    }
    let mut exchanges = vec![config.exchange()];
    exchanges.extend(config.pair_sizes.iter().map(|s| config.size_exchange(*s)));
    exchanges.push(config.rebuild_exchange());
    for name in exchanges
        .iter()
        .flat_map(|e| [e.clone(), events::dead_letter_exchange(e)])
    {
        channel
            .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = amqp.close(200, "done".into()).await;
    Ok(())
}
