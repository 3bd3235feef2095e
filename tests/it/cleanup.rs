//! The harness cleans up after itself: a test that passes leaves no database and no stream
//! behind; one that fails keeps them for a look.

use futures::TryStreamExt;
use serde_json::json;

use crate::BUILD;
use testkit::{id_of, Env};

/// A pool on the suite's Postgres server, in the server's own database (the one DATABASE_URL
/// names need not exist).
async fn server() -> sqlx::PgPool {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/conveyor".into());
    let options: sqlx::postgres::PgConnectOptions = base.parse().expect("DATABASE_URL");
    sqlx::PgPool::connect_with(options.database("postgres"))
        .await
        .expect("connect")
}

/// Whether the suite's Postgres server has the database `name`.
async fn database_exists(name: &str) -> bool {
    let db = server().await;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&db)
        .await
        .expect("read pg_database");
    db.close().await;
    exists
}

/// The streams of namespace `ns` (its own, and those under its buckets and object stores).
async fn streams_of(js: &async_nats::jetstream::Context, ns: &str) -> Vec<String> {
    let upper = ns.to_uppercase();
    let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    names
        .into_iter()
        .filter(|n| {
            n.starts_with(&format!("{upper}_"))
                || n.starts_with(&format!("KV_{upper}_"))
                || n.starts_with(&format!("OBJ_{upper}_"))
        })
        .collect()
}

fn database_name(env: &Env) -> String {
    env.db_url.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_passing_test_leaves_no_database_and_no_stream_behind() {
    let (db, ns, js) = {
        let env = Env::new(BUILD).await;
        let (_dev, api) = env.spawn_http("dev").await;
        let id = id_of(&api.submit(json!({ "kind": "noop" })).await);
        api.wait_terminal(&id).await;
        let js = env.js().await;
        assert!(database_exists(&database_name(&env)).await);
        assert!(
            streams_of(&js, &env.ns).await.len() >= 3,
            "the namespace has streams and buckets while the test runs"
        );
        // The API process is killed, then the Env dropped, as at the end of a test.
        (database_name(&env), env.ns.clone(), js)
    };
    assert!(!database_exists(&db).await, "{db} was dropped");
    assert_eq!(
        streams_of(&js, &ns).await,
        Vec::<String>::new(),
        "the namespace's streams, buckets and object stores were deleted"
    );
}

#[tokio::test]
async fn a_failing_test_keeps_its_database() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A test that fails: its Env is dropped while the thread panics.
    let failed = tokio::spawn(async move {
        let env = Env::new(BUILD).await;
        tx.send(database_name(&env)).unwrap();
        panic!("a failing test");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
    let db = rx.await.unwrap();
    assert!(database_exists(&db).await, "{db} was kept");

    // Now clean up what the failing test kept.
    let pool = server().await;
    sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();
}
