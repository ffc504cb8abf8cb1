//! `POST /api/runs` and `/api/admin/runs…`: a run debits its cost atomically, never overdraws,
//! and shows up in the admin list, the details and the stats.

use crate::common::{assert_error, json_of, short_id, TestApp};
use serde_json::{json, Value};

async fn create_org(app: &TestApp, balance: i64) -> String {
    let id = format!("org_{}", ulid::Ulid::new());
    let name = format!("org-{}", short_id());
    let mut conn = app.db().await;
    let tx = conn.transaction().await.expect("tx");
    tx.execute(
        "INSERT INTO organizations (id, name, display_name) VALUES ($1, $2, $2)",
        &[&id, &name],
    )
    .await
    .expect("insert org");
    if balance > 0 {
        watchpost_admin::ledger::apply(
            &tx,
            &watchpost_admin::ledger::Entry {
                organization_id: &id,
                credits_amount: balance,
                transaction_type: "purchase",
                description: "seed",
                actor_id: None,
                reference: None,
            },
        )
        .await
        .expect("seed credits");
    }
    tx.commit().await.expect("commit");
    id
}

async fn add_member(app: &TestApp, org: &str, user_id: &str) {
    app.db()
        .await
        .execute(
            "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'member')",
            &[&org, &user_id],
        )
        .await
        .expect("membership");
}

async fn run(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    json_of(
        app.post("/api/runs")
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("run"),
    )
    .await
}

async fn count(app: &TestApp, sql: &str, org: &str) -> i64 {
    app.db()
        .await
        .query_one(sql, &[&org])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn runs_debit_credits_and_are_listed() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let org = create_org(&app, 100).await;

    // Not a member of any organization yet.
    let (s, e) = run(&app, &user.token, json!({"name": "a", "credits": 1})).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    add_member(&app, &org, &user.id).await;

    let (s, r) = run(
        &app,
        &user.token,
        json!({"name": "crawl", "credits": 30, "input": {"url": "https://example.com"}}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    assert!(r["id"].as_str().is_some_and(|i| i.starts_with("run_")));
    assert_eq!(r["organization_id"], org.as_str());
    assert_eq!(r["user_id"], user.id.as_str());
    assert_eq!(r["credits_cost"], 30);
    assert_eq!(r["status"], "succeeded");
    let run_id = r["id"].as_str().expect("id").to_string();

    // A free run has no ledger row.
    let (s, free) = run(&app, &user.token, json!({"name": "ping", "credits": 0})).await;
    assert_eq!(s, 201, "{free}");
    assert_eq!(free["transaction_id"], Value::Null);

    // Insufficient: 409, no run, no ledger row.
    let (s, e) = run(&app, &user.token, json!({"name": "huge", "credits": 71})).await;
    assert_error(s, &e, 409, "CONFLICT");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM runs WHERE organization_id = $1",
            &org
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &app,
            "SELECT credits_balance FROM organizations WHERE id = $1",
            &org
        )
        .await,
        70
    );

    // Bad input.
    for body in [
        json!({"name": "x", "credits": -1}),
        json!({"name": "", "credits": 1}),
        json!({"name": "x"}),
        json!({"name": "x", "credits": 1.5}),
        json!({"name": "x", "credits": 1, "status": "exploded"}),
        json!({"name": "x", "credits": 1, "extra": true}),
    ] {
        let (s, e) = run(&app, &user.token, body).await;
        assert_error(s, &e, 400, "BAD_REQUEST");
    }
    let stranger_org = create_org(&app, 10).await;
    let (s, e) = run(
        &app,
        &user.token,
        json!({"name": "x", "credits": 1, "organization_id": stranger_org}),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");
    let (s, e) = run(
        &app,
        &user.token,
        json!({"name": "x", "credits": 1, "organization_id": format!("org_{}", ulid::Ulid::new())}),
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");
    // With two organizations the caller must say which.
    add_member(&app, &stranger_org, &user.id).await;
    let (s, e) = run(&app, &user.token, json!({"name": "x", "credits": 1})).await;
    assert_error(s, &e, 400, "BAD_REQUEST");
    let (s, r2) = run(
        &app,
        &user.token,
        json!({"name": "y", "credits": 4, "organization_id": stranger_org, "status": "failed"}),
    )
    .await;
    assert_eq!(s, 201, "{r2}");
    let (s, e) = json_of(
        app.post("/api/runs")
            .json(&json!({"name": "x", "credits": 1}))
            .send()
            .await
            .expect("run"),
    )
    .await;
    assert_error(s, &e, 401, "UNAUTHORIZED");

    // Admin list and details.
    let (s, e) = json_of(
        app.get("/api/admin/runs")
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");
    let (s, page) = json_of(
        app.get(&format!(
            "/api/admin/runs?organization_id={org}&user_id={}",
            user.id
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("list"),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let (_, page) = json_of(
        app.get("/api/admin/runs?status=failed")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["items"][0]["organization_id"], stranger_org.as_str());
    let (s, e) = json_of(
        app.get("/api/admin/runs?status=nope")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_error(s, &e, 400, "BAD_REQUEST");
    let (s, detail) = json_of(
        app.get(&format!("/api/admin/runs/{run_id}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(s, 200, "{detail}");
    assert_eq!(detail["input"]["url"], "https://example.com");
    assert_eq!(detail["transaction"]["transaction_type"], "execution");
    assert_eq!(detail["transaction"]["credits_amount"], -30);
    assert_eq!(detail["transaction"]["balance_after"], 70);
    assert_eq!(detail["transaction"]["reference"], run_id.as_str());
    for id in ["run_nope".to_string(), format!("run_{}", ulid::Ulid::new())] {
        let (s, e) = json_of(
            app.get(&format!("/api/admin/runs/{id}"))
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_error(s, &e, 404, "NOT_FOUND");
    }

    // Stats count runs and credits used; every run is audited.
    let (s, stats) = json_of(
        app.get("/api/admin/stats")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("stats"),
    )
    .await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(stats["total_executions"], 3);
    assert_eq!(stats["total_credits_used"], 34);
    let audits = app.audit_rows("run.created").await;
    assert_eq!(audits.len(), 3);
    assert_eq!(audits[0]["actor_id"], user.id.as_str());
    assert_eq!(audits[0]["resource_id"], run_id.as_str());
}

#[tokio::test]
async fn simultaneous_runs_never_overdraw() {
    let app = TestApp::builder()
        .configure(|c| {
            c.postgres.pool_size = 24;
            c.postgres.wait_timeout_ms = 60_000;
        })
        .spawn()
        .await;
    let user = app.create_user().await;
    let org = create_org(&app, 30).await;
    add_member(&app, &org, &user.id).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url("/api/runs");
            let token = user.token.clone();
            tokio::spawn(async move {
                json_of(
                    client
                        .post(url)
                        .bearer_auth(token)
                        .json(&json!({"name": format!("run {i}"), "credits": 1}))
                        .send()
                        .await
                        .expect("run"),
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (s, b) = task.await.expect("task");
        match s {
            201 => ok += 1,
            409 => refused += 1,
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!((ok, refused), (30, 70));
    assert_eq!(
        count(
            &app,
            "SELECT credits_balance FROM organizations WHERE id = $1",
            &org
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM runs WHERE organization_id = $1",
            &org
        )
        .await,
        30
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM credit_transactions WHERE organization_id = $1 \
             AND transaction_type = 'execution'",
            &org
        )
        .await,
        30
    );
}
