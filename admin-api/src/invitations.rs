//! Invitation codes at registration.
//!
//! [`redeem_for_registration`] runs inside the registration transaction, after the user row is
//! inserted and before it commits, so a refused code rolls the whole registration back. Its
//! audit row is written by the caller at the end of the transaction ([`InvitationUse::record`]).

use deadpool_postgres::Transaction;

use crate::{
    audit::{self, AuditCtx},
    error::ApiError,
    models::col,
    routes::redemption_codes::normalize_code,
};

/// A use of an invitation code taken by [`redeem_for_registration`], to be audited last in
/// the registration transaction ([`InvitationUse::record`]).
#[derive(Debug, Clone)]
pub struct InvitationUse {
    pub code: String,
    pub inviter_user_id: String,
    pub invitee_user_id: String,
    /// `uses` after this one.
    pub uses: i32,
}

impl InvitationUse {
    /// Appends the `invitation_code.used` audit row.
    pub async fn record(&self, tx: &Transaction<'_>, ctx: &AuditCtx) -> Result<String, ApiError> {
        audit::record(
            tx,
            ctx,
            "invitation_code.used",
            "invitation_code",
            &self.code,
            serde_json::json!({
                "uses": {"before": self.uses - 1, "after": self.uses},
                "inviter_user_id": self.inviter_user_id,
                "invitee_user_id": self.invitee_user_id,
            }),
        )
        .await
    }
}

/// Validates and consumes `code` for the new user `user_id`, and records the referral (the
/// code's owner invited `user_id`).
///
/// One guarded UPDATE takes a use only while the code is active, has uses left and its owner's
/// account is active, so concurrent registrations never exceed `max_uses` and a disabled
/// user's codes are dead. Unknown, disabled, used-up codes and codes of disabled owners are
/// 422 with distinct messages. The invitee is the user being created, so self-referral and
/// cycles cannot happen, and the referrals table allows one inviter per user.
pub async fn redeem_for_registration(
    tx: &Transaction<'_>,
    code: &str,
    user_id: &str,
) -> Result<InvitationUse, ApiError> {
    let unknown = || ApiError::unprocessable("invitation code is not valid");
    let code = normalize_code(code).ok_or_else(unknown)?;
    let taken = tx
        .query_opt(
            "UPDATE invitation_codes SET uses = uses + 1, updated_at = now() \
             WHERE code = $1 AND is_active AND uses < max_uses AND user_id <> $2 \
               AND EXISTS (SELECT 1 FROM users o \
                           WHERE o.id = invitation_codes.user_id AND o.status = 'active') \
             RETURNING user_id, uses",
            &[&code, &user_id],
        )
        .await?;
    let Some(taken) = taken else {
        // Only now ask why the guarded UPDATE matched nothing.
        let row = tx
            .query_opt(
                "SELECT c.is_active, c.uses >= c.max_uses AS used_up, \
                 o.status = 'active' AS owner_active \
                 FROM invitation_codes c JOIN users o ON o.id = c.user_id WHERE c.code = $1",
                &[&code],
            )
            .await?
            .ok_or_else(unknown)?;
        return Err(if !col::<bool>(&row, "is_active")? {
            ApiError::unprocessable("invitation code is disabled")
        } else if !col::<bool>(&row, "owner_active")? {
            ApiError::unprocessable("invitation code is not valid: its owner's account is disabled")
        } else if col::<bool>(&row, "used_up")? {
            ApiError::unprocessable("invitation code has no uses left")
        } else {
            ApiError::unprocessable("invitation code changed meanwhile; try again")
        });
    };
    let inviter: String = col(&taken, "user_id")?;
    let uses: i32 = col(&taken, "uses")?;
    tx.execute(
        "INSERT INTO referrals (invitee_user_id, inviter_user_id, code) VALUES ($1, $2, $3)",
        &[&user_id, &inviter, &code],
    )
    .await?;
    Ok(InvitationUse {
        code,
        inviter_user_id: inviter,
        invitee_user_id: user_id.to_string(),
        uses,
    })
}
