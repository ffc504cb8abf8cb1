//! `/api/admin/credits…`: adjustments, the ledger, idempotency keys, concurrent deductions and
//! the invariant that every balance equals the sum of its ledger.

use crate::common::{assert_error, balance, json_of, seed_member, seed_org, TestAdmin, TestApp};
use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
use serde_json::{json, Value};

/// An app whose pool lets many requests wait for a connection instead of answering 503.
async fn roomy_app() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.postgres.pool_size = 24;
            c.postgres.wait_timeout_ms = 60_000;
            c.admin.rate_limit_per_minute = 100_000;
            c.admin.rate_limit_per_hour = 100_000;
        })
        .spawn()
        .await
}

async fn adjust(app: &TestApp, admin: &TestAdmin, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut request = app
        .post("/api/admin/credits/adjust")
        .bearer_auth(&admin.key)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    json_of(request.send().await.expect("adjust")).await
}

async fn ledger_count(app: &TestApp, org: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE organization_id = $1",
            &[&org],
        )
        .await
        .expect("count")
        .get(0)
}

/// Every organization's balance equals the sum of its ledger and its latest `balance_after`.
async fn assert_ledger_consistent(app: &TestApp) {
    let rows = app
        .db()
        .await
        .query(
            "SELECT o.id, o.credits_balance, \
               COALESCE((SELECT sum(credits_amount) FROM credit_transactions t \
                         WHERE t.organization_id = o.id), 0)::bigint AS total, \
               COALESCE((SELECT balance_after FROM credit_transactions t \
                         WHERE t.organization_id = o.id ORDER BY seq DESC LIMIT 1), 0) AS latest \
             FROM organizations o",
            &[],
        )
        .await
        .expect("ledger query");
    for row in rows {
        let (id, bal, total, latest): (String, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(bal, total, "{id}: balance vs ledger sum");
        assert_eq!(bal, latest, "{id}: balance vs latest balance_after");
        assert!(bal >= 0, "{id}: negative balance");
    }
}

#[tokio::test]
async fn adjustments_change_the_balance_through_the_ledger() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let org = seed_org(&app).await;

    // 401 / 403.
    let (s, b) = json_of(
        app.post("/api/admin/credits/adjust")
            .json(&json!({"organization_id": org, "credits_amount": 5, "description": "x"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = json_of(
        app.get("/api/admin/credits/transactions")
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &b, 403, "FORBIDDEN");

    let (s, t) = adjust(
        &app,
        &admin,
        json!({"organization_id": org, "credits_amount": 100, "description": "welcome"}),
        None,
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert!(t["id"].as_str().is_some_and(|i| i.starts_with("txn_")));
    assert_eq!(t["credits_amount"], 100);
    assert_eq!(t["transaction_type"], "adjustment");
    assert_eq!(t["balance_after"], 100);
    assert_eq!(t["organization_id"], org.as_str());
    assert_eq!(t["description"], "welcome");
    let (s, t) = adjust(
        &app,
        &admin,
        json!({"organization_id": org, "credits_amount": -40, "description": "correction"}),
        None,
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["balance_after"], 60);

    // The organization shows the balance.
    let (s, o) = json_of(
        app.get(&format!("/api/admin/organizations/{org}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["credits_balance"], 60);

    // Bad input: 4xx envelope and nothing changes.
    let bad = [
        (
            json!({"organization_id": org, "credits_amount": 0, "description": "x"}),
            400,
        ),
        (
            json!({"organization_id": org, "credits_amount": 1.5, "description": "x"}),
            400,
        ),
        (
            json!({"organization_id": org, "credits_amount": "5", "description": "x"}),
            400,
        ),
        (json!({"organization_id": org, "credits_amount": 5}), 400),
        (
            json!({"organization_id": org, "credits_amount": 5, "description": "  "}),
            400,
        ),
        (
            json!({"organization_id": org, "credits_amount": 5, "description": "x", "extra": 1}),
            400,
        ),
        (
            json!({"organization_id": "org_nope", "credits_amount": 5, "description": "x"}),
            404,
        ),
        (
            json!({"organization_id": format!("org_{}", ulid::Ulid::new()), "credits_amount": 5, "description": "x"}),
            404,
        ),
        (
            json!({"organization_id": org, "credits_amount": -61, "description": "too much"}),
            409,
        ),
        (
            json!({"organization_id": org, "credits_amount": i64::MAX, "description": "overflow"}),
            422,
        ),
    ];
    for (body, status) in bad {
        let (s, b) = adjust(&app, &admin, body.clone(), None).await;
        let code = match status {
            400 => "BAD_REQUEST",
            404 => "NOT_FOUND",
            409 => "CONFLICT",
            _ => "UNPROCESSABLE",
        };
        assert_error(s, &b, status, code);
    }
    let (s, b) = adjust(
        &app,
        &admin,
        json!({"organization_id": org, "credits_amount": 5, "description": "x"}),
        Some(""),
    )
    .await;
    assert_error(s, &b, 400, "BAD_REQUEST");
    assert_eq!(balance(&app, &org).await, 60);
    assert_eq!(ledger_count(&app, &org).await, 2);

    // The list, filtered and paged.
    let other = seed_org(&app).await;
    let (s, _) = adjust(
        &app,
        &admin,
        json!({"organization_id": other, "credits_amount": 7, "description": "x"}),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let (s, page) = json_of(
        app.get(&format!(
            "/api/admin/credits/transactions?organization_id={org}&transaction_type=adjustment&limit=1"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request"),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["credits_amount"], -40);
    let cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    let (_, page) = json_of(
        app.get(&format!(
            "/api/admin/credits/transactions?organization_id={org}&limit=1&cursor={cursor}"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request"),
    )
    .await;
    assert_eq!(page["items"][0]["credits_amount"], 100);
    assert_eq!(page["next_cursor"], Value::Null);
    let (s, page) = json_of(
        app.get("/api/admin/credits/transactions?transaction_type=purchase")
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(0));
    for query in ["transaction_type=gift", "limit=0", "cursor=%%%", "bogus=1"] {
        let (s, b) = json_of(
            app.get(&format!("/api/admin/credits/transactions?{query}"))
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }

    // Audited, and the ledger refuses changes.
    let audits = app.audit_rows("credits.adjusted").await;
    assert_eq!(audits.len(), 3);
    assert_eq!(audits[0]["actor_id"], admin.id.as_str());
    assert_eq!(audits[0]["resource_type"], "credit_transaction");
    assert_eq!(audits[0]["changes"]["credits_amount"]["after"], 100);
    let db = app.db().await;
    assert!(db
        .execute("UPDATE credit_transactions SET credits_amount = 1", &[])
        .await
        .is_err());
    assert!(db
        .execute("DELETE FROM credit_transactions", &[])
        .await
        .is_err());
    assert_ledger_consistent(&app).await;
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_result() {
    let app = roomy_app().await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let body = json!({"organization_id": org, "credits_amount": 25, "description": "topup"});

    let (s1, first) = adjust(&app, &admin, body.clone(), Some("key-1")).await;
    assert_eq!(s1, 201, "{first}");
    let (s2, second) = adjust(&app, &admin, body.clone(), Some("key-1")).await;
    assert_eq!(s2, 201, "{second}");
    assert_eq!(first, second);
    assert_eq!(balance(&app, &org).await, 25);
    assert_eq!(ledger_count(&app, &org).await, 1);

    // Same key, another body.
    let (s, b) = adjust(
        &app,
        &admin,
        json!({"organization_id": org, "credits_amount": 26, "description": "topup"}),
        Some("key-1"),
    )
    .await;
    assert_error(s, &b, 422, "UNPROCESSABLE");
    assert_eq!(balance(&app, &org).await, 25);

    // Keys are per admin: another admin's identical key is a new request.
    let other_admin = app.create_admin().await;
    let (s, b) = adjust(&app, &other_admin, body.clone(), Some("key-1")).await;
    assert_eq!(s, 201, "{b}");
    assert_ne!(b["id"], first["id"]);
    assert_eq!(balance(&app, &org).await, 50);

    // A refusal is replayed too, even once the balance would allow it.
    let debit = json!({"organization_id": org, "credits_amount": -80, "description": "debit"});
    let (s, b) = adjust(&app, &admin, debit.clone(), Some("key-2")).await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, _) = adjust(
        &app,
        &admin,
        json!({"organization_id": org, "credits_amount": 100, "description": "more"}),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let (s, b) = adjust(&app, &admin, debit.clone(), Some("key-2")).await;
    assert_error(s, &b, 409, "CONFLICT");
    assert_eq!(balance(&app, &org).await, 150);

    // Concurrent duplicates apply once.
    let body = json!({"organization_id": org, "credits_amount": 3, "description": "race"});
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/admin/credits/adjust");
            let key = admin.key.clone();
            let body = body.clone();
            tokio::spawn(async move {
                json_of(
                    client
                        .post(url)
                        .bearer_auth(key)
                        .header("Idempotency-Key", "race-key")
                        .json(&body)
                        .send()
                        .await
                        .expect("adjust"),
                )
                .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (s, b) = task.await.expect("task");
        assert_eq!(s, 201, "{b}");
        ids.insert(b["id"].as_str().expect("id").to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(balance(&app, &org).await, 153);
    assert_eq!(app.audit_rows("credits.adjusted").await.len(), 4);
    assert_ledger_consistent(&app).await;
}

#[tokio::test]
async fn concurrent_deductions_never_overdraw() {
    let app = roomy_app().await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let (s, _) = adjust(
        &app,
        &admin,
        json!({"organization_id": org, "credits_amount": 30, "description": "budget"}),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/admin/credits/adjust");
            let key = admin.key.clone();
            let body =
                json!({"organization_id": org, "credits_amount": -1, "description": "spend"});
            tokio::spawn(async move {
                json_of(
                    client
                        .post(url)
                        .bearer_auth(key)
                        .json(&body)
                        .send()
                        .await
                        .expect("adjust"),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    let mut balances = Vec::new();
    for task in tasks {
        let (s, b) = task.await.expect("task");
        match s {
            201 => {
                ok += 1;
                balances.push(b["balance_after"].as_i64().expect("balance_after"));
            }
            409 => {
                assert_error(s, &b, 409, "CONFLICT");
                refused += 1;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!((ok, refused), (30, 70));
    balances.sort_unstable();
    assert_eq!(balances, (0..30).collect::<Vec<i64>>());
    assert_eq!(balance(&app, &org).await, 0);
    assert_eq!(ledger_count(&app, &org).await, 31);
    assert_ledger_consistent(&app).await;
}

#[derive(Debug, Clone)]
enum Op {
    Adjust { org: usize, amount: i64 },
    Run { org: usize, cost: i64 },
    Redeem { org: usize, value: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, -60i64..60)
            .prop_filter("not zero", |(_, a)| *a != 0)
            .prop_map(|(org, amount)| Op::Adjust { org, amount }),
        (0..2usize, 0i64..40).prop_map(|(org, cost)| Op::Run { org, cost }),
        (0..2usize, 1i64..50).prop_map(|(org, value)| Op::Redeem { org, value }),
    ]
}

struct Fixture {
    app: TestApp,
    admin: TestAdmin,
    orgs: Vec<String>,
    /// One member's API key per organization.
    members: Vec<String>,
}

async fn apply_op(fx: &Fixture, op: &Op) -> Result<(), String> {
    let (s, b) = match op {
        Op::Adjust { org, amount } => {
            adjust(
                &fx.app,
                &fx.admin,
                json!({"organization_id": fx.orgs[*org], "credits_amount": amount, "description": "prop"}),
                None,
            )
            .await
        }
        Op::Run { org, cost } => {
            json_of(
                fx.app
                    .post("/api/runs")
                    .bearer_auth(&fx.members[*org])
                    .json(&json!({"name": "prop", "credits": cost}))
                    .send()
                    .await
                    .expect("run"),
            )
            .await
        }
        Op::Redeem { org, value } => {
            let (s, batch) = json_of(
                fx.app
                    .post("/api/admin/redemption-codes/bulk")
                    .bearer_auth(&fx.admin.key)
                    .json(&json!({"count": 1, "type": "credits", "value": value}))
                    .send()
                    .await
                    .expect("bulk"),
            )
            .await;
            if s != 201 {
                return Err(format!("bulk: {s} {batch}"));
            }
            json_of(
                fx.app
                    .post("/api/redeem")
                    .bearer_auth(&fx.members[*org])
                    .json(&json!({"code": batch["codes"][0]}))
                    .send()
                    .await
                    .expect("redeem"),
            )
            .await
        }
    };
    match s {
        201 | 409 => Ok(()),
        _ => Err(format!("{op:?}: {s} {b}")),
    }
}

/// After any sequence of adjustments, runs and redemptions, every balance equals the sum of
/// its ledger and the latest row's `balance_after`.
#[test]
fn balances_always_equal_their_ledger() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fx = rt.block_on(async {
        let app = TestApp::spawn().await;
        let admin = app.create_admin().await;
        let mut orgs = Vec::new();
        let mut members = Vec::new();
        for _ in 0..2 {
            let org = seed_org(&app).await;
            members.push(seed_member(&app, &org).await.1);
            orgs.push(org);
        }
        Fixture {
            app,
            admin,
            orgs,
            members,
        }
    });
    let mut runner = TestRunner::new(proptest::test_runner::Config {
        cases: 16,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let result = runner.run(&vec(op(), 1..20), |ops| {
        rt.block_on(async {
            for op in &ops {
                apply_op(&fx, op).await.map_err(TestCaseError::fail)?;
            }
            assert_ledger_consistent(&fx.app).await;
            Ok(())
        })
    });
    rt.block_on(async move { drop(fx) });
    if let Err(e) = result {
        panic!("{e}");
    }
}
