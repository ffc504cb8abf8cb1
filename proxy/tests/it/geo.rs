//! GeoIP: the client's country reaches the upstream, the access log and the risk engine.

use mmdb_writer::ipnet::IpNet;
use mmdb_writer::{IpVersion, Value, Writer};

use crate::support::{Origin, TestProxy, BROWSER};

/// A small database in the flat `country_code` layout: 81.2.69.0/24 is GB.
fn write_db(dir: &std::path::Path) -> std::path::PathBuf {
    let mut w = Writer::builder("Watchpost-Proxy-Test")
        .ip_version(IpVersion::V6)
        .build();
    let net: IpNet = "81.2.69.0/24".parse().expect("network");
    w.insert_value(net, Value::map([("country_code", "GB")]))
        .expect("insert");
    let path = dir.join("country.mmdb");
    std::fs::write(&path, w.to_bytes().expect("encode")).expect("write mmdb");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_reaches_upstream_log_and_risk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = write_db(dir.path());
    let origin = Origin::start().await;
    let extra = format!(
        "[geo]\nmmdb_path = \"{}\"\n[gateway]\nip_mode = \"proxy\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\nrisk_reject_threshold = 1.0\n[risk]\ncountries = [\"gb\"]\n",
        db.display()
    );
    let mut p = TestProxy::start("geo", &[origin.addr], &extra).await;
    let mut headers = BROWSER.to_vec();
    headers.push(("X-Forwarded-For", "81.2.69.142"));
    let r = p.get("/", &headers).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = origin.last();
    assert_eq!(got.header("x-client-ip").as_deref(), Some("81.2.69.142"));
    assert_eq!(got.header("x-client-country").as_deref(), Some("GB"));
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["country"], "GB");
    assert!(
        entry["reasons"].split(',').any(|r| r == "country"),
        "{entry:?}"
    );
    // An address outside the database has no country.
    let r = p.get("/", BROWSER).await;
    assert_eq!(
        origin.last().header("x-client-country").as_deref(),
        Some("")
    );
    let entry = p.entry_for(r.header("x-request-id").expect("id")).await;
    assert_eq!(entry["country"], "");
    assert_eq!(p.healthz().await["geo"], "enabled");
    p.cleanup().await;
}
