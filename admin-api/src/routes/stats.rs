//! Placeholder: the stats endpoints are added here (see "Adding an endpoint" in the README).

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
