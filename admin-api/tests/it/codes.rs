//! Redemption codes (`/api/admin/redemption-codes…`, `POST /api/redeem`) and invitation codes
//! (`/api/admin/invitation-codes…`, `POST /api/me/invitation-codes`, registration).

use std::collections::HashSet;

use crate::common::{
    assert_error, balance, json_of, seed_member, seed_org, short_id, TestAdmin, TestApp, PASSWORD,
};
use serde_json::{json, Value};

async fn bulk(app: &TestApp, admin: &TestAdmin, body: Value) -> (u16, Value) {
    json_of(
        app.post("/api/admin/redemption-codes/bulk")
            .bearer_auth(&admin.key)
            .json(&body)
            .send()
            .await
            .expect("bulk"),
    )
    .await
}

async fn redeem(app: &TestApp, key: &str, code: &str) -> (u16, Value) {
    json_of(
        app.post("/api/redeem")
            .bearer_auth(key)
            .json(&json!({"code": code}))
            .send()
            .await
            .expect("redeem"),
    )
    .await
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    app.db()
        .await
        .query_one(sql, &[])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn bulk_creation_validates_and_lists() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;

    let (s, b) = json_of(
        app.post("/api/admin/redemption-codes/bulk")
            .bearer_auth(&user.token)
            .json(&json!({"count": 1, "type": "credits", "value": 1}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = json_of(
        app.get("/api/admin/redemption-codes")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    for body in [
        json!({"count": 0, "type": "credits", "value": 1}),
        json!({"count": 10001, "type": "credits", "value": 1}),
        json!({"count": 1, "type": "gold", "value": 1}),
        json!({"count": 1, "type": "credits", "value": 0}),
        json!({"count": 1, "type": "credits", "value": -3}),
        json!({"count": 1, "type": "credits", "value": "abc"}),
        json!({"count": 1, "type": "credits", "value": 1.5}),
        json!({"count": 1, "type": "credits", "value": 1, "max_uses": 0}),
        json!({"count": 1, "type": "credits", "value": 1, "expires_at": "tomorrow"}),
        json!({"count": 1, "type": "credits", "value": 1, "expires_at": past}),
        json!({"count": 1, "type": "credits"}),
        json!({"count": 1, "type": "credits", "value": 1, "color": "red"}),
    ] {
        let (s, b) = bulk(&app, &admin, body.clone()).await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM redemption_codes").await,
        0
    );

    let future = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let (s, b) = bulk(
        &app,
        &admin,
        json!({"count": 1000, "type": "credits", "value": "25", "max_uses": 3,
               "expires_at": future, "batch_id": "spring"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["batch_id"], "spring");
    assert_eq!(b["count"], 1000);
    let codes: Vec<String> = b["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();
    assert_eq!(codes.iter().collect::<HashSet<_>>().len(), 1000);
    for code in &codes {
        assert_eq!(code.len(), 11, "{code}");
        assert_eq!(&code[5..6], "-");
        assert!(code
            .chars()
            .all(|c| c == '-' || "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c)));
    }
    let (s, b) = bulk(
        &app,
        &admin,
        json!({"count": 2, "type": "credits", "value": 5}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let other_batch = b["batch_id"].as_str().expect("batch").to_string();

    // Listing: by batch, paged without repeats, by code fragment (any case), by type.
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = "/api/admin/redemption-codes?batch_id=spring&limit=100".to_string();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = json_of(
            app.get(&url)
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("list"),
        )
        .await;
        assert_eq!(s, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            assert_eq!(item["value"], 25);
            assert_eq!(item["max_uses"], 3);
            assert_eq!(item["type"], "credits");
            assert!(seen.insert(item["code"].as_str().expect("code").to_string()));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, codes.iter().cloned().collect::<HashSet<_>>());
    let fragment = codes[0][..5].to_lowercase();
    let (s, page) = json_of(
        app.get(&format!("/api/admin/redemption-codes?q={fragment}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(page["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|i| i["code"] == codes[0].as_str()));
    let (_, page) = json_of(
        app.get(&format!(
            "/api/admin/redemption-codes?batch_id={other_batch}"
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("list"),
    )
    .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    for query in ["type=gold", "q=u!", "limit=101"] {
        let (s, b) = json_of(
            app.get(&format!("/api/admin/redemption-codes?{query}"))
                .bearer_auth(&admin.key)
                .send()
                .await
                .expect("list"),
        )
        .await;
        assert_error(s, &b, 400, "BAD_REQUEST");
    }

    // PATCH is_active, by any spelling of the code.
    let spelled = codes[0].to_lowercase().replace('-', " ");
    let (s, b) = json_of(
        app.patch(&format!("/api/admin/redemption-codes/{spelled}"))
            .bearer_auth(&admin.key)
            .json(&json!({"is_active": false}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["is_active"], false);
    let (s, b) = json_of(
        app.patch("/api/admin/redemption-codes/ZZZZZ-ZZZZZ")
            .bearer_auth(&admin.key)
            .json(&json!({"is_active": false}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, b) = json_of(
        app.patch(&format!("/api/admin/redemption-codes/{}", codes[1]))
            .bearer_auth(&admin.key)
            .json(&json!({"is_active": "no"}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_error(s, &b, 400, "BAD_REQUEST");

    let created = app.audit_rows("redemption_codes.created").await;
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["resource_id"], "spring");
    assert_eq!(created[0]["changes"]["count"]["after"], 1000);
    let updated = app.audit_rows("redemption_code.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["changes"]["is_active"]["after"], false);
}

#[tokio::test]
async fn redemption_refusals_are_distinct_and_change_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let (_, alice) = seed_member(&app, &org).await;
    let (_, bob) = seed_member(&app, &org).await;

    let (_, b) = bulk(
        &app,
        &admin,
        json!({"count": 4, "type": "credits", "value": 10}),
    )
    .await;
    let codes: Vec<String> = b["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();

    // Redeemed in lower case without the dash.
    let (s, r) = redeem(&app, &alice, &codes[0].to_lowercase().replace('-', "")).await;
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["credits_added"], 10);
    assert_eq!(r["organization_id"], org.as_str());
    assert_eq!(r["transaction"]["transaction_type"], "purchase");
    assert_eq!(r["transaction"]["balance_after"], 10);
    assert_eq!(balance(&app, &org).await, 10);

    // Exhausted (max_uses 1).
    let (s, e) = redeem(&app, &bob, &codes[0]).await;
    assert_error(s, &e, 409, "CONFLICT");
    let exhausted = e["error"]["message"].clone();
    // Already redeemed by this user.
    let (s, e) = redeem(&app, &alice, &codes[0]).await;
    assert_error(s, &e, 409, "CONFLICT");
    let already = e["error"]["message"].clone();
    // Unknown, malformed.
    let (s, e) = redeem(&app, &alice, "ZZZZZ-ZZZZZ").await;
    assert_error(s, &e, 404, "NOT_FOUND");
    let unknown = e["error"]["message"].clone();
    let (s, e) = redeem(&app, &alice, "not a code!").await;
    assert_error(s, &e, 404, "NOT_FOUND");
    // Inactive.
    let (s, _) = json_of(
        app.patch(&format!("/api/admin/redemption-codes/{}", codes[1]))
            .bearer_auth(&admin.key)
            .json(&json!({"is_active": false}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(s, 200);
    let (s, e) = redeem(&app, &alice, &codes[1]).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let inactive = e["error"]["message"].clone();
    // Expired.
    app.db()
        .await
        .execute(
            "UPDATE redemption_codes SET expires_at = now() - interval '1 minute' WHERE code = $1",
            &[&codes[2].replace('-', "")],
        )
        .await
        .expect("expire");
    let (s, e) = redeem(&app, &alice, &codes[2]).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let expired = e["error"]["message"].clone();
    let messages: HashSet<String> = [&exhausted, &already, &unknown, &inactive, &expired]
        .iter()
        .map(|m| m.as_str().expect("message").to_string())
        .collect();
    assert_eq!(messages.len(), 5, "{messages:?}");

    // Bad bodies and no auth.
    for body in [
        json!({}),
        json!({"code": 5}),
        json!({"code": "X", "more": 1}),
    ] {
        let (s, e) = json_of(
            app.post("/api/redeem")
                .bearer_auth(&alice)
                .json(&body)
                .send()
                .await
                .expect("redeem"),
        )
        .await;
        assert_error(s, &e, 400, "BAD_REQUEST");
    }
    let (s, e) = json_of(
        app.post("/api/redeem")
            .json(&json!({"code": codes[3]}))
            .send()
            .await
            .expect("redeem"),
    )
    .await;
    assert_error(s, &e, 401, "UNAUTHORIZED");
    // A user in no organization.
    let loner = app.create_user().await;
    let (s, e) = redeem(&app, &loner.token, &codes[3]).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");

    // Nothing changed by the refusals.
    assert_eq!(balance(&app, &org).await, 10);
    assert_eq!(scalar(&app, "SELECT count(*) FROM redemptions").await, 1);
    assert_eq!(
        scalar(&app, "SELECT sum(uses)::bigint FROM redemption_codes").await,
        1
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM credit_transactions").await,
        1
    );
    let audits = app.audit_rows("redemption_code.redeemed").await;
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0]["changes"]["credits"], 10);
}

#[tokio::test]
async fn two_hundred_simultaneous_redemptions_of_a_fifty_use_code() {
    let app = TestApp::builder()
        .configure(|c| {
            c.postgres.pool_size = 24;
            c.postgres.wait_timeout_ms = 60_000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let mut keys = Vec::new();
    for _ in 0..200 {
        keys.push(seed_member(&app, &org).await.1);
    }
    let (s, b) = bulk(
        &app,
        &admin,
        json!({"count": 1, "type": "credits", "value": 7, "max_uses": 50}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let code = b["codes"][0].as_str().expect("code").to_string();

    let tasks: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let client = app.client.clone();
            let url = app.url("/api/redeem");
            let code = code.clone();
            tokio::spawn(async move {
                json_of(
                    client
                        .post(url)
                        .bearer_auth(key)
                        .json(&json!({"code": code}))
                        .send()
                        .await
                        .expect("redeem"),
                )
                .await
            })
        })
        .collect();
    let (mut ok, mut exhausted) = (0, 0);
    for task in tasks {
        let (s, b) = task.await.expect("task");
        match s {
            201 => ok += 1,
            409 => exhausted += 1,
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!((ok, exhausted), (50, 150));
    assert_eq!(balance(&app, &org).await, 50 * 7);
    assert_eq!(scalar(&app, "SELECT count(*) FROM redemptions").await, 50);
    assert_eq!(
        scalar(&app, "SELECT uses::bigint FROM redemption_codes").await,
        50
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'purchase'"
        )
        .await,
        50
    );
}

async fn register(app: &TestApp, code: Option<&str>) -> (u16, Value) {
    let username = format!("r-{}", short_id());
    let mut body = json!({"email": format!("{username}@example.com"), "username": username,
                          "password": PASSWORD});
    if let Some(code) = code {
        body["invitation_code"] = json!(code);
    }
    json_of(
        app.post("/api/auth/register")
            .json(&body)
            .send()
            .await
            .expect("register"),
    )
    .await
}

#[tokio::test]
async fn invitation_codes_gate_registration_and_record_referrals() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let inviter = app.create_user().await;

    // A user gets a code of their own.
    let (s, mine) = json_of(
        app.post("/api/me/invitation-codes")
            .bearer_auth(&inviter.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 201, "{mine}");
    assert_eq!(mine["user_id"], inviter.id.as_str());
    assert_eq!(mine["max_uses"], 5);
    let (s, e) = json_of(
        app.post("/api/me/invitation-codes")
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &e, 401, "UNAUTHORIZED");

    // An admin creates one with two uses.
    let (s, code) = json_of(
        app.post("/api/admin/invitation-codes")
            .bearer_auth(&admin.key)
            .json(&json!({"user_id": inviter.id, "max_uses": 2}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 201, "{code}");
    let code_text = code["code"].as_str().expect("code").to_string();
    for (body, status, err) in [
        (
            json!({"user_id": inviter.id, "max_uses": 0}),
            400,
            "BAD_REQUEST",
        ),
        (
            json!({"user_id": format!("usr_{}", ulid::Ulid::new())}),
            404,
            "NOT_FOUND",
        ),
        (json!({"user_id": "nobody"}), 404, "NOT_FOUND"),
    ] {
        let (s, e) = json_of(
            app.post("/api/admin/invitation-codes")
                .bearer_auth(&admin.key)
                .json(&body)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_error(s, &e, status, err);
    }
    let (s, e) = json_of(
        app.get("/api/admin/invitation-codes")
            .bearer_auth(&inviter.token)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &e, 403, "FORBIDDEN");

    // Invitation required.
    let (s, _) = json_of(
        app.patch("/api/admin/config")
            .bearer_auth(&admin.key)
            .json(&json!({"registration_requires_invitation": true}))
            .send()
            .await
            .expect("config"),
    )
    .await;
    assert_eq!(s, 200);
    let users_before = scalar(&app, "SELECT count(*) FROM users").await;
    let (s, e) = register(&app, None).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let (s, e) = register(&app, Some("NOPE1234")).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM users").await,
        users_before
    );

    // Two uses, in any case; the third is refused and creates nobody.
    let (s, first) = register(&app, Some(&code_text.to_lowercase())).await;
    assert_eq!(s, 201, "{first}");
    let (s, second) = register(&app, Some(&code_text)).await;
    assert_eq!(s, 201, "{second}");
    let (s, e) = register(&app, Some(&code_text)).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    assert!(e["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("no uses left")));
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM users").await,
        users_before + 2
    );
    let (s, got) = json_of(
        app.get(&format!(
            "/api/admin/invitation-codes/{}",
            code_text.to_lowercase()
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("request"),
    )
    .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["uses"], 2);
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM referrals").await,
        2,
        "referrals recorded"
    );
    let inviters: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM referrals WHERE inviter_user_id = $1 AND invitee_user_id = $2",
            &[&inviter.id, &first["user"]["id"].as_str().expect("id")],
        )
        .await
        .expect("query")
        .get(0);
    assert_eq!(inviters, 1);

    // PATCH: max_uses below uses is refused; raising it and disabling work.
    let path = format!("/api/admin/invitation-codes/{code_text}");
    let (s, e) = json_of(
        app.patch(&path)
            .bearer_auth(&admin.key)
            .json(&json!({"max_uses": 1}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let (s, p) = json_of(
        app.patch(&path)
            .bearer_auth(&admin.key)
            .json(&json!({"max_uses": 3, "is_active": false}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["max_uses"].clone(), p["is_active"].clone()),
        (json!(3), json!(false))
    );
    let (s, e) = register(&app, Some(&code_text)).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    assert!(e["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("disabled")));
    let (s, e) = json_of(
        app.patch("/api/admin/invitation-codes/ZZZZZZZZ")
            .bearer_auth(&admin.key)
            .json(&json!({"is_active": true}))
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert_error(s, &e, 404, "NOT_FOUND");

    // Listing by owner and by fragment.
    let (s, page) = json_of(
        app.get(&format!("/api/admin/invitation-codes?q={}", inviter.id))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let (_, page) = json_of(
        app.get(&format!(
            "/api/admin/invitation-codes?q={}",
            &code_text[..4].to_lowercase()
        ))
        .bearer_auth(&admin.key)
        .send()
        .await
        .expect("list"),
    )
    .await;
    assert!(page["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|c| c["code"] == code_text.as_str()));

    assert_eq!(app.audit_rows("invitation_code.created").await.len(), 2);
    assert_eq!(app.audit_rows("invitation_code.used").await.len(), 2);
    assert_eq!(app.audit_rows("invitation_code.updated").await.len(), 1);
}

#[tokio::test]
async fn one_user_redeems_a_code_once_under_concurrency_and_bulk_reaches_ten_thousand() {
    let app = TestApp::builder()
        .configure(|c| {
            c.postgres.pool_size = 12;
            c.postgres.wait_timeout_ms = 60_000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let org = seed_org(&app).await;
    let (_, key) = seed_member(&app, &org).await;
    let (s, b) = bulk(
        &app,
        &admin,
        json!({"count": 1, "type": "credits", "value": 9, "max_uses": 100}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let code = b["codes"][0].as_str().expect("code").to_string();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/redeem");
            let key = key.clone();
            let code = code.clone();
            tokio::spawn(async move {
                json_of(
                    client
                        .post(url)
                        .bearer_auth(key)
                        .json(&json!({"code": code}))
                        .send()
                        .await
                        .expect("redeem"),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let (s, b) = task.await.expect("task");
        match s {
            201 => ok += 1,
            409 => assert_error(s, &b, 409, "CONFLICT"),
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(balance(&app, &org).await, 9);
    // The refused attempts gave their use back.
    assert_eq!(
        scalar(&app, "SELECT uses::bigint FROM redemption_codes").await,
        1
    );

    let (s, b) = bulk(
        &app,
        &admin,
        json!({"count": 10000, "type": "credits", "value": 1}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["codes"].as_array().map(Vec::len), Some(10000));
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM redemption_codes").await,
        10001
    );

    // An organization with ledger history is archived, not deleted: its ledger stays.
    let (s, e) = json_of(
        app.delete(&format!("/api/admin/organizations/{org}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!(s, 204, "{e}");
    assert_eq!(balance(&app, &org).await, 9);
    let (s, o) = json_of(
        app.get(&format!("/api/admin/organizations/{org}"))
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["status"], "archived");
    assert_eq!(o["enabled"], false);
}

async fn mint(app: &TestApp, token: &str) -> (u16, Value) {
    json_of(
        app.post("/api/me/invitation-codes")
            .bearer_auth(token)
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn invitation_codes_a_user_mints_are_capped_exactly_under_concurrency() {
    const CAP: usize = 3;
    let app = TestApp::builder()
        .configure(|c| c.admin.max_active_invitation_codes_per_user = CAP as u32)
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let user = app.create_user().await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, url, token) = (
                app.client.clone(),
                app.url("/api/me/invitation-codes"),
                user.token.clone(),
            );
            tokio::spawn(async move {
                json_of(
                    client
                        .post(url)
                        .bearer_auth(token)
                        .send()
                        .await
                        .expect("request"),
                )
                .await
            })
        })
        .collect();
    let mut created = Vec::new();
    for task in tasks {
        let (status, body) = task.await.expect("task");
        if status == 201 {
            created.push(body["code"].as_str().expect("code").to_string());
        } else {
            assert_error(status, &body, 422, "UNPROCESSABLE");
        }
    }
    assert_eq!(created.len(), CAP);
    // Disabling one frees a place; admins are not capped when they mint for a user.
    let (s, b) = json_of(
        app.patch(&format!("/api/admin/invitation-codes/{}", created[0]))
            .bearer_auth(&admin.key)
            .json(&json!({"is_active": false}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(mint(&app, &user.token).await.0, 201);
    let (s, e) = mint(&app, &user.token).await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    let (s, b) = json_of(
        app.post("/api/admin/invitation-codes")
            .bearer_auth(&admin.key)
            .json(&json!({"user_id": user.id}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

#[tokio::test]
async fn codes_of_a_disabled_user_cannot_be_redeemed() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let owner = app.create_user().await;
    let (s, code) = mint(&app, &owner.token).await;
    assert_eq!(s, 201, "{code}");
    let code = code["code"].as_str().expect("code").to_string();
    let (s, b) = json_of(
        app.patch(&format!("/api/admin/users/{}", owner.id))
            .bearer_auth(&admin.key)
            .json(&json!({"status": "disabled"}))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let name = format!("u-{}", short_id());
    let (s, e) = json_of(
        app.post("/api/auth/register")
            .json(
                &json!({"email": format!("{name}@example.com"), "username": name,
                          "password": PASSWORD, "invitation_code": code}),
            )
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(s, &e, 422, "UNPROCESSABLE");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{e}"
    );
    // Nothing changed: no use taken, no user, no referral.
    let uses = scalar(
        &app,
        &format!("SELECT uses::bigint FROM invitation_codes WHERE code = '{code}'"),
    )
    .await;
    assert_eq!(uses, 0);
    assert_eq!(
        scalar(
            &app,
            &format!("SELECT count(*) FROM users WHERE username = '{name}'")
        )
        .await,
        0
    );
    assert_eq!(scalar(&app, "SELECT count(*) FROM referrals").await, 0);
}
