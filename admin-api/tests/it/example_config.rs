//! The shipped example config must load as it is, and show every default the binary uses.

use watchpost_admin::Config;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/watchpost.example.toml"
);

#[test]
fn example_config_loads_and_matches_the_defaults() {
    let from_file = Config::load(Some(EXAMPLE), &[]).unwrap_or_else(|e| panic!("{e}"));
    let defaults = Config::load(None, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
}
