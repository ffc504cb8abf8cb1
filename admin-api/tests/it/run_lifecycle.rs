//! `PATCH /api/runs/{id}` and `PATCH /api/admin/runs/{id}`: legal transitions only, times
//! recorded, and a failed or cancelled run refunded exactly once, even under concurrent
//! PATCHes, with the balance always equal to the ledger.

use serde_json::{json, Value};

use crate::common::{assert_error, balance, json_of, seed_member, seed_org, TestApp};

/// An organization with `credits` credits (a `purchase` row, so balance == ledger).
async fn funded_org(app: &TestApp, credits: i64) -> String {
    let org = seed_org(app).await;
    let mut conn = app.db().await;
    let tx = conn.transaction().await.expect("tx");
    watchpost_admin::ledger::apply(
        &tx,
        &watchpost_admin::ledger::Entry {
            organization_id: &org,
            credits_amount: credits,
            transaction_type: "purchase",
            description: "seed",
            actor_id: None,
            reference: None,
        },
    )
    .await
    .expect("seed credits");
    tx.commit().await.expect("commit");
    org
}

async fn ledger_sum(app: &TestApp, org: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT COALESCE(sum(credits_amount), 0)::bigint FROM credit_transactions \
             WHERE organization_id = $1",
            &[&org],
        )
        .await
        .expect("sum")
        .get(0)
}

async fn refunds(app: &TestApp, run_id: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM credit_transactions \
             WHERE transaction_type = 'refund' AND reference = $1",
            &[&run_id],
        )
        .await
        .expect("refunds")
        .get(0)
}

async fn create_run(app: &TestApp, token: &str, credits: i64, status: &str) -> String {
    let (s, r) = json_of(
        app.post("/api/runs")
            .bearer_auth(token)
            .json(&json!({"name": "job", "credits": credits, "status": status}))
            .send()
            .await
            .expect("create run"),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    r["id"].as_str().expect("id").to_string()
}

async fn patch(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    json_of(
        app.patch(path)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("patch"),
    )
    .await
}

#[tokio::test]
async fn runs_move_through_legal_transitions_only() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let org = funded_org(&app, 100).await;
    let (_, key) = seed_member(&app, &org).await;
    let (_, other_key) = seed_member(&app, &org).await;
    let id = create_run(&app, &key, 10, "pending").await;
    let path = format!("/api/runs/{id}");

    let (s, r) = json_of(
        app.get(&format!("/api/admin/runs/{id}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "pending");
    assert_eq!(r["started_at"], Value::Null);

    // Bad input: 400, nothing changes.
    for body in [
        json!({"status": "pending"}),
        json!({"status": "completed"}),
        json!({"status": "exploded"}),
        json!({}),
        json!({"status": "running", "extra": 1}),
        json!({"status": "succeeded", "error": "boom"}),
        json!({"status": "failed", "error": ""}),
        json!({"status": "failed", "error": "a\u{0}b"}),
    ] {
        let (s, e) = patch(&app, &path, &key, body.clone()).await;
        assert_error(s, &e, 400, "BAD_REQUEST");
    }
    // Not the owner: 404; unknown: 404; no token: 401.
    let (s, e) = patch(&app, &path, &other_key, json!({"status": "running"})).await;
    assert_error(s, &e, 404, "NOT_FOUND");
    let (s, e) = patch(
        &app,
        &format!("/api/runs/run_{}", ulid::Ulid::new()),
        &key,
        json!({"status": "running"}),
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");
    let (s, e) = json_of(
        app.patch(&path)
            .json(&json!({"status": "running"}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_error(s, &e, 401, "UNAUTHORIZED");

    // pending → running → succeeded.
    let (s, r) = patch(&app, &path, &key, json!({"status": "running"})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "running");
    assert!(r["started_at"].is_string(), "{r}");
    assert_eq!(r["finished_at"], Value::Null);
    let (s, e) = patch(&app, &path, &key, json!({"status": "running"})).await;
    assert_error(s, &e, 409, "CONFLICT");
    let (s, r) = patch(
        &app,
        &path,
        &key,
        json!({"status": "succeeded", "output": {"pages": 3}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["output"], json!({"pages": 3}));
    assert!(r["finished_at"].is_string(), "{r}");
    assert!(r["duration_ms"].as_i64().is_some_and(|d| d >= 0), "{r}");
    assert_eq!(r["refund_transaction_id"], Value::Null);

    // Final: no way out, for the owner or an admin; no refund after success.
    for status in ["failed", "cancelled", "running", "succeeded"] {
        let (s, e) = patch(&app, &path, &key, json!({"status": status})).await;
        assert_error(s, &e, 409, "CONFLICT");
        let (s, e) = patch(
            &app,
            &format!("/api/admin/runs/{id}"),
            &admin.key,
            json!({"status": status}),
        )
        .await;
        assert_error(s, &e, 409, "CONFLICT");
    }
    assert_eq!(refunds(&app, &id).await, 0);
    assert_eq!(balance(&app, &org).await, 90);
    assert_eq!(balance(&app, &org).await, ledger_sum(&app, &org).await);

    // Audited: one run.updated per accepted change.
    let audit = app.audit_rows("run.updated").await;
    assert_eq!(audit.len(), 2);
    assert_eq!(
        audit[1]["changes"]["status"],
        json!({"before": "running", "after": "succeeded"})
    );

    // An admin may move anyone's run; a non-admin may not use the admin path.
    let other = create_run(&app, &other_key, 5, "running").await;
    let (s, e) = patch(
        &app,
        &format!("/api/admin/runs/{other}"),
        &key,
        json!({"status": "failed"}),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");
    let (s, r) = patch(
        &app,
        &format!("/api/admin/runs/{other}"),
        &admin.key,
        json!({"status": "failed", "error": "worker lost\nretry later"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["error"], "worker lost\nretry later");
    assert!(r["refund_transaction_id"].is_string(), "{r}");
    assert_eq!(refunds(&app, &other).await, 1);
    assert_eq!(balance(&app, &org).await, 90);
    assert_eq!(balance(&app, &org).await, ledger_sum(&app, &org).await);

    // A pending run cancelled before it started: refunded, no duration.
    let never = create_run(&app, &key, 7, "pending").await;
    let (s, r) = patch(
        &app,
        &format!("/api/runs/{never}"),
        &key,
        json!({"status": "cancelled"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["started_at"], Value::Null);
    assert_eq!(r["duration_ms"], Value::Null);
    assert!(r["finished_at"].is_string(), "{r}");
    assert_eq!(refunds(&app, &never).await, 1);
    assert_eq!(balance(&app, &org).await, 90);
    assert_eq!(balance(&app, &org).await, ledger_sum(&app, &org).await);
    assert_eq!(app.audit_rows("run.refunded").await.len(), 2);

    // A free run fails without a refund row.
    let free = create_run(&app, &key, 0, "running").await;
    let (s, r) = patch(
        &app,
        &format!("/api/runs/{free}"),
        &key,
        json!({"status": "failed"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(refunds(&app, &free).await, 0);
}

#[tokio::test]
async fn concurrent_patches_refund_a_failed_run_once() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let org = funded_org(&app, 1000).await;
    let (_, key) = seed_member(&app, &org).await;

    for round in 0..3 {
        let id = create_run(&app, &key, 25, "running").await;
        let before = balance(&app, &org).await;
        // Twelve PATCHes at once: owner and admin, failed and cancelled.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (path, token) = if i % 2 == 0 {
                (format!("/api/runs/{id}"), key.clone())
            } else {
                (format!("/api/admin/runs/{id}"), admin.key.clone())
            };
            let status = if i % 3 == 0 { "cancelled" } else { "failed" };
            let request = app
                .patch(&path)
                .bearer_auth(token)
                .json(&json!({"status": status}));
            tasks.push(tokio::spawn(async move {
                json_of(request.send().await.expect("patch")).await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            let (s, body) = task.await.expect("task");
            match s {
                200 => ok += 1,
                409 => assert_eq!(body["error"]["code"], "CONFLICT", "{body}"),
                other => panic!("round {round}: unexpected {other}: {body}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: exactly one PATCH wins");
        assert_eq!(refunds(&app, &id).await, 1, "round {round}");
        assert_eq!(balance(&app, &org).await, before + 25, "round {round}");
        assert_eq!(
            balance(&app, &org).await,
            ledger_sum(&app, &org).await,
            "round {round}"
        );
    }
    assert_eq!(app.audit_rows("run.refunded").await.len(), 3);
}

#[tokio::test]
async fn a_runs_key_finishes_the_runs_of_its_user_only() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let org = funded_org(&app, 100).await;
    let (worker, _) = seed_member(&app, &org).await;
    let (_, other_session) = seed_member(&app, &org).await;
    let (s, created) = json_of(
        app.post("/api/admin/api-keys")
            .bearer_auth(&admin.key)
            .json(&json!({"name": "worker", "user_id": worker, "scopes": ["runs"]}))
            .send()
            .await
            .expect("create key"),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_string();
    let key_id = created["id"].as_str().expect("id").to_string();

    // The key starts a run for its user, then finishes it.
    let id = create_run(&app, &key, 10, "pending").await;
    let path = format!("/api/runs/{id}");
    let (s, r) = patch(&app, &path, &key, json!({"status": "running"})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["user_id"], worker.as_str());
    let (s, r) = patch(
        &app,
        &path,
        &key,
        json!({"status": "failed", "error": "oom"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(r["refund_transaction_id"].is_string(), "{r}");
    assert_eq!(refunds(&app, &id).await, 1);
    assert_eq!(balance(&app, &org).await, 100);
    assert_eq!(balance(&app, &org).await, ledger_sum(&app, &org).await);

    // Another user's run is not the key's: 404, unchanged.
    let theirs = create_run(&app, &other_session, 5, "running").await;
    let (s, e) = patch(
        &app,
        &format!("/api/runs/{theirs}"),
        &key,
        json!({"status": "cancelled"}),
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");
    assert_eq!(refunds(&app, &theirs).await, 0);
    // The admin path is not the runs scope's.
    let (s, e) = patch(
        &app,
        &format!("/api/admin/runs/{theirs}"),
        &key,
        json!({"status": "cancelled"}),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");

    // The audit log names the key as the actor of the PATCHes.
    let (s, page) = json_of(
        app.get("/api/admin/audit-logs?action=run.updated")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("audit"),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{page}");
    for item in items {
        assert_eq!(item["actor"]["type"], "api_key", "{item}");
        assert_eq!(item["actor"]["id"], key_id.as_str(), "{item}");
        assert_eq!(item["actor_id"], worker.as_str(), "{item}");
        assert_eq!(item["resource"], json!({"type": "run", "id": id}), "{item}");
    }
}
