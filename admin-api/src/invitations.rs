//! Invitation codes at registration: the seam that the invitation-codes feature fills in.
//!
//! [`redeem_for_registration`] runs inside the registration transaction, after the user row is
//! inserted and before it commits, so a refused code rolls the whole registration back.

use deadpool_postgres::Transaction;

use crate::error::ApiError;

/// Validates and consumes `code` for the new user `user_id`. Invitation codes are not enabled
/// yet, so any code is refused with 422.
pub async fn redeem_for_registration(
    _tx: &Transaction<'_>,
    _code: &str,
    _user_id: &str,
) -> Result<(), ApiError> {
    Err(ApiError::unprocessable("invitation codes are not enabled"))
}
