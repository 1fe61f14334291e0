use crate::helpers::*;
use command_service::Application;

/// Replicas rolled out together onto an empty database all migrate it at once: each must
/// start, none may fail on another's half-applied migration.
#[tokio::test]
async fn replicas_starting_together_on_an_empty_database_all_start() {
    for _ in 0..3 {
        let database = create_database().await;
        let database_url = database.url.clone();
        let builds = (0..4).map(|_| {
            let settings = test_settings(&database_url, "test.unused", Vec::new());
            tokio::spawn(Application::build(settings))
        });
        let results = futures_util::future::join_all(builds).await;
        let mut started = 0;
        for result in results {
            match result.expect("build task") {
                Ok(_) => started += 1,
                Err(err) => panic!("a replica failed to start: {err:#}"),
            }
        }
        assert_eq!(started, 4);
        // Migrated once: every migration recorded exactly once.
        let mut conn =
            <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(
                &database_url,
            )
            .await
            .expect("database");
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(
                "SELECT count(*) - count(DISTINCT version) AS n FROM __diesel_schema_migrations",
            ),
            &mut conn,
        )
        .await
        .expect("migrations table");
        assert_eq!(n.n, 0, "no migration recorded twice");
        // The index built CONCURRENTLY after the migrations (`db::CONCURRENT_INDEXES`), valid.
        let n: N = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(
                "SELECT count(*) AS n FROM pg_index \
                 WHERE indexrelid = to_regclass('idempotency_keys_todo_id_idx') AND indisvalid",
            ),
            &mut conn,
        )
        .await
        .expect("pg_index");
        assert_eq!(n.n, 1, "the erase's index is built and valid");
    }
}
