//! The browser side of the server: GraphiQL at `/`, the operator console at `/ui`, their
//! embedded assets under `/assets/`, and the dev sign-in of the embedded default.

mod assets;
mod dev_sign_in;

use axum::Router;
use axum::routing::get;

use crate::state::AppState;

pub use dev_sign_in::{DEMO_USERS, DemoUser, dev_sign_in_allowed};

/// Routes to merge into the server's router.
pub fn routes(app: &AppState) -> Router {
    let pages = assets::Pages::new(&app.settings);
    Router::new()
        .route("/", get(assets::graphiql))
        .route("/ui", get(assets::console))
        .route("/ui/", get(assets::console))
        .route("/assets/{*path}", get(assets::asset))
        .with_state(pages)
        .merge(dev_sign_in::routes(app))
}
