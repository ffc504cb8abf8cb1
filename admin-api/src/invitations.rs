//! Invitation codes at registration.
//!
//! [`redeem_for_registration`] runs inside the registration transaction, after the user row is
//! inserted and before it commits, so a refused code rolls the whole registration back.

use deadpool_postgres::Transaction;

use crate::{
    audit::{self, AuditCtx},
    error::ApiError,
    models::col,
    routes::redemption_codes::normalize_code,
};

/// Validates and consumes `code` for the new user `user_id`, and records the referral (the
/// code's owner invited `user_id`).
///
/// One guarded UPDATE takes a use only while the code is active and has uses left, so
/// concurrent registrations never exceed `max_uses`. Unknown, disabled and used-up codes are
/// 422 with distinct messages. The invitee is the user being created, so self-referral and
/// cycles cannot happen, and the referrals table allows one inviter per user.
pub async fn redeem_for_registration(
    tx: &Transaction<'_>,
    code: &str,
    user_id: &str,
) -> Result<(), ApiError> {
    let unknown = || ApiError::unprocessable("invitation code is not valid");
    let code = normalize_code(code).ok_or_else(unknown)?;
    let taken = tx
        .query_opt(
            "UPDATE invitation_codes SET uses = uses + 1, updated_at = now() \
             WHERE code = $1 AND is_active AND uses < max_uses AND user_id <> $2 \
             RETURNING user_id, uses",
            &[&code, &user_id],
        )
        .await?;
    let Some(taken) = taken else {
        // Only now ask why the guarded UPDATE matched nothing.
        let row = tx
            .query_opt(
                "SELECT is_active FROM invitation_codes WHERE code = $1",
                &[&code],
            )
            .await?
            .ok_or_else(unknown)?;
        return Err(if col::<bool>(&row, "is_active")? {
            ApiError::unprocessable("invitation code has no uses left")
        } else {
            ApiError::unprocessable("invitation code is disabled")
        });
    };
    let inviter: String = col(&taken, "user_id")?;
    let uses: i32 = col(&taken, "uses")?;
    tx.execute(
        "INSERT INTO referrals (invitee_user_id, inviter_user_id, code) VALUES ($1, $2, $3)",
        &[&user_id, &inviter, &code],
    )
    .await?;
    let ctx = AuditCtx {
        actor_id: Some(user_id.to_string()),
        ..AuditCtx::default()
    };
    audit::record(
        tx,
        &ctx,
        "invitation_code.used",
        "invitation_code",
        &code,
        serde_json::json!({
            "uses": {"before": uses - 1, "after": uses},
            "inviter_user_id": inviter,
            "invitee_user_id": user_id,
        }),
    )
    .await?;
    Ok(())
}
